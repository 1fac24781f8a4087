"""Downloads against a local HTTP server: verification, idempotency, archive safety, mirrors."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from n2n_core.data import download as dl
from n2n_core.data import sources
from n2n_core.errors import ConfigError, DataError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


GOOD = b"\x89PNG fake kodak image " + bytes(range(256)) * 40
OTHER = b"another image " * 500


class Server:
    """A static file server on 127.0.0.1 that records the paths it was asked for."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        self.fail: dict[str, int] = {}  # path -> how many more times to answer 503
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                if outer.fail.get(self.path, 0) > 0:
                    outer.fail[self.path] -= 1
                    self.send_error(503, "try later")
                    return
                super().do_GET()

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "served")
    srv.root.mkdir()
    yield srv
    srv.close()


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def leftovers(root: Path) -> list[str]:
    """Temporary files or staging folders left anywhere under root."""
    return [str(p) for p in root.rglob("*") if p.name.startswith(dl.TMP_PREFIX)]


def make_tar(path: Path, members: list[tuple], mode: str = "w:gz") -> Path:
    """members: (name, bytes) for files, or (name, TarInfo-type, linkname) for links/specials."""
    with tarfile.open(path, mode) as tf:
        for m in members:
            info = tarfile.TarInfo(m[0])
            if len(m) == 2:
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
            else:
                info.type, info.linkname = m[1], m[2]
                tf.addfile(info)
    return path


def tar_bytes(members: list[tuple], tmp_path: Path) -> bytes:
    return make_tar(tmp_path / "scratch.tgz", members).read_bytes()


# --------------------------------------------------------------------------- hashing, table


def test_sha256_and_verify_file(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(GOOD)
    assert sources.sha256_file(f) == sha(GOOD)
    assert sources.verify_file(f, sha(GOOD))
    assert sources.verify_file(f, sha(GOOD).upper())
    assert not sources.verify_file(f, sha(OTHER))
    assert not sources.verify_file(tmp_path / "missing", sha(GOOD))
    assert not sources.verify_file(tmp_path, sha(GOOD))  # a folder is not a valid file


def test_packaged_checksum_table():
    table = sources.load_checksums()
    assert len(table) == 325
    assert table["kodak24/kodim01.png"].startswith("a56e27cbf5f8")
    assert len(sources.set_files("kodak24")) == 24
    assert len(sources.set_files("bsd300")) == 101  # 100 test images + iids_test.txt
    assert len(sources.set_files("bsd300-train")) == 200
    assert sources.set_files("set14") == {}
    assert set(sources.SET_NAMES) == {"kodak24", "bsd300", "bsd300-train", "set14"}
    assert "set14" not in sources.VERIFIED_SETS


def test_unknown_set_is_a_config_error(data_dir):
    with pytest.raises(ConfigError, match="kodak24"):
        dl.download_set("kodak25", data_dir)
    assert not data_dir.exists()


# --------------------------------------------------------------------------- per-file sets


def test_file_download_verified_and_idempotent(server, data_dir):
    server.put("kodim01.png", GOOD)
    server.put("kodim02.png", OTHER)
    table = {"kodak24/kodim01.png": sha(GOOD), "kodak24/kodim02.png": sha(OTHER)}

    out = dl.download_set("kodak24", data_dir, mirror=server.url, checksums=table, progress=False)

    assert out == data_dir / "kodak24"
    assert (out / "kodim01.png").read_bytes() == GOOD
    assert (out / "kodim02.png").read_bytes() == OTHER
    assert sorted(server.requests) == ["/kodim01.png", "/kodim02.png"]
    assert leftovers(data_dir) == []

    # Second run: everything present and valid, so not a single request.
    dl.download_set("kodak24", data_dir, mirror=server.url, checksums=table, progress=False)
    assert len(server.requests) == 2

    # A damaged file is fetched again, and only that one.
    (out / "kodim02.png").write_bytes(b"truncated")
    dl.download_set("kodak24", data_dir, mirror=server.url + "/", checksums=table, progress=False)
    assert server.requests[2:] == ["/kodim02.png"]
    assert (out / "kodim02.png").read_bytes() == OTHER


def test_mirror_from_environment(server, data_dir, monkeypatch):
    server.put("kodim01.png", GOOD)
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    table = {"kodak24/kodim01.png": sha(GOOD)}
    dl.download_set("kodak24", data_dir, checksums=table, progress=True)
    assert (data_dir / "kodak24/kodim01.png").read_bytes() == GOOD
    assert server.requests == ["/kodim01.png"]


def test_transient_server_error_is_retried(server, data_dir, monkeypatch):
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    server.put("kodim05.png", GOOD)
    server.fail["/kodim05.png"] = 1
    table = {"kodak24/kodim05.png": sha(GOOD)}
    dl.download_set("kodak24", data_dir, mirror=server.url, checksums=table, progress=False)
    assert (data_dir / "kodak24/kodim05.png").read_bytes() == GOOD
    assert server.requests == ["/kodim05.png"] * 2

    server.fail["/kodim05.png"] = dl.ATTEMPTS
    (data_dir / "kodak24/kodim05.png").unlink()
    with pytest.raises(DataError, match="503"):
        dl.download_set("kodak24", data_dir, mirror=server.url, checksums=table, progress=False)
    assert list((data_dir / "kodak24").iterdir()) == []


def test_corrupt_file_is_deleted_and_reported(server, data_dir):
    server.put("kodim03.png", GOOD[:-1] + b"X")
    expected = sha(GOOD)
    actual = sha(GOOD[:-1] + b"X")
    table = {"kodak24/kodim03.png": expected}

    with pytest.raises(DataError) as err:
        dl.download_set("kodak24", data_dir, mirror=server.url, checksums=table, progress=False)

    msg = str(err.value)
    assert "kodak24/kodim03.png" in msg and expected in msg and actual in msg
    assert "--mirror" in msg and "n2n-bench download kodak24" in msg
    assert not (data_dir / "kodak24/kodim03.png").exists()
    assert not data_dir.exists()  # no temp file left behind, nor the folders it made


def test_http_error_names_url_and_fix(server, data_dir):
    table = {"kodak24/kodim04.png": sha(GOOD)}
    with pytest.raises(DataError, match=r"kodim04\.png.*404.*--mirror"):
        dl.download_set("kodak24", data_dir, mirror=server.url, checksums=table, progress=False)
    assert leftovers(data_dir) == []
    assert not (data_dir / "kodak24/kodim04.png").exists()


# --------------------------------------------------------------------------- archive sets


def bsds_archive(tmp_path, *, with_ids=True, extra=()):
    members = [
        ("BSDS300/images/test/3096.jpg", b"test image 3096"),
        ("BSDS300/images/test/101085.jpg", b"test image 101085"),
        ("BSDS300/images/train/2092.jpg", b"train image 2092"),
        ("BSDS300/iids_train.txt", b"2092\n"),
        *extra,
    ]
    if with_ids:
        members.append(("BSDS300/iids_test.txt", b"101085\n3096\n"))
    return tar_bytes(members, tmp_path)


BSD_TABLE = {
    "bsd300/test/3096.jpg": sha(b"test image 3096"),
    "bsd300/test/101085.jpg": sha(b"test image 101085"),
    "bsd300/iids_test.txt": sha(b"101085\n3096\n"),
    "bsd300/train/2092.jpg": sha(b"train image 2092"),
}


def test_archive_extracted_remapped_and_idempotent(server, data_dir, tmp_path):
    server.put("BSDS300-images.tgz", bsds_archive(tmp_path))
    out = dl.download_set(
        "bsd300", data_dir, mirror=server.url, checksums=BSD_TABLE, progress=False
    )

    assert out == data_dir / "bsd300"
    files = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*") if p.is_file())
    assert files == [
        "bsd300/iids_test.txt", "bsd300/test/101085.jpg", "bsd300/test/3096.jpg",
    ]  # the train image and iids_train.txt were not extracted; no BSDS300/ folder, no temp
    assert (out / "test/3096.jpg").read_bytes() == b"test image 3096"
    assert server.requests == ["/BSDS300-images.tgz"]

    out = dl.download_set(
        "bsd300-train", data_dir, mirror=server.url, checksums=BSD_TABLE, progress=False
    )
    assert out == data_dir / "bsd300/train"
    assert (out / "2092.jpg").read_bytes() == b"train image 2092"
    assert len(server.requests) == 2

    for name in ("bsd300", "bsd300-train"):
        dl.download_set(name, data_dir, mirror=server.url, checksums=BSD_TABLE, progress=False)
    assert len(server.requests) == 2  # nothing fetched again
    assert leftovers(data_dir) == []

    (data_dir / "bsd300/test/3096.jpg").unlink()
    dl.download_set("bsd300", data_dir, mirror=server.url, checksums=BSD_TABLE, progress=False)
    assert (data_dir / "bsd300/test/3096.jpg").read_bytes() == b"test image 3096"
    assert len(server.requests) == 3
    assert sources.verify_set("bsd300", data_dir, checksums=BSD_TABLE) == []


def test_archive_without_id_list_derives_it(server, data_dir, tmp_path):
    server.put("BSDS300-images.tgz", bsds_archive(tmp_path, with_ids=False))
    dl.download_set("bsd300", data_dir, mirror=server.url, checksums=BSD_TABLE, progress=False)
    assert (data_dir / "bsd300/iids_test.txt").read_bytes() == b"3096\n101085\n"
    assert sources.verify_set("bsd300", data_dir, checksums=BSD_TABLE) == []
    dl.download_set("bsd300", data_dir, mirror=server.url, checksums=BSD_TABLE, progress=False)
    assert len(server.requests) == 1  # the derived list counts as valid


def test_archive_id_list_with_other_line_endings_is_accepted(server, data_dir, tmp_path):
    members = [
        ("BSDS300/images/test/3096.jpg", b"test image 3096"),
        ("BSDS300/images/test/101085.jpg", b"test image 101085"),
        ("BSDS300/iids_test.txt", b"101085\r\n3096\r\n"),
    ]
    server.put("BSDS300-images.tgz", tar_bytes(members, tmp_path))
    dl.download_set("bsd300", data_dir, mirror=server.url, checksums=BSD_TABLE, progress=False)
    assert (data_dir / "bsd300/iids_test.txt").read_bytes() == b"101085\r\n3096\r\n"
    assert sources.verify_set("bsd300", data_dir, checksums=BSD_TABLE) == []


def test_archive_member_mismatch(server, data_dir, tmp_path):
    table = dict(BSD_TABLE, **{"bsd300/test/3096.jpg": sha(b"something else")})
    server.put("BSDS300-images.tgz", bsds_archive(tmp_path))
    with pytest.raises(DataError) as err:
        dl.download_set("bsd300", data_dir, mirror=server.url, checksums=table, progress=False)
    msg = str(err.value)
    assert "bsd300/test/3096.jpg" in msg and sha(b"something else") in msg
    assert sha(b"test image 3096") in msg
    assert not (data_dir / "bsd300/test/3096.jpg").exists()
    assert leftovers(data_dir) == []


def test_archive_with_escaping_symlink_is_refused(server, data_dir, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    evil = tar_bytes(
        [("BSDS300/images/test/3096.jpg", tarfile.SYMTYPE, str(outside))], tmp_path
    )
    server.put("BSDS300-images.tgz", evil)
    with pytest.raises(DataError, match="3096.jpg"):
        dl.download_set("bsd300", data_dir, mirror=server.url, checksums=BSD_TABLE, progress=False)
    assert not (data_dir / "bsd300/test/3096.jpg").exists()
    assert outside.read_bytes() == b"secret"
    assert leftovers(data_dir) == []


def test_archive_missing_member(server, data_dir, tmp_path):
    server.put("BSDS300-images.tgz", tar_bytes([("BSDS300/images/test/3096.jpg", b"x")], tmp_path))
    table = {"bsd300/test/101085.jpg": sha(b"test image 101085")}
    with pytest.raises(DataError, match="101085.jpg is missing from the archive"):
        dl.download_set("bsd300", data_dir, mirror=server.url, checksums=table, progress=False)
    assert leftovers(data_dir) == []


def test_not_an_archive(server, data_dir):
    server.put("BSDS300-images.tgz", b"<html>error page</html>")
    with pytest.raises(DataError, match="not a tar archive"):
        dl.download_set("bsd300", data_dir, mirror=server.url, checksums=BSD_TABLE, progress=False)
    assert leftovers(data_dir) == []


# --------------------------------------------------------------------------- unverified set14


def test_set14_needs_allow_unverified(server, data_dir, tmp_path):
    with pytest.raises(DataError, match="--allow-unverified"):
        dl.download_set("set14", data_dir, mirror=server.url, progress=False)
    assert server.requests == []

    names = ["baboon", "barbara", "bridge", "coastguard", "comic", "face", "flowers",
             "foreman", "lenna", "man", "monarch", "pepper", "ppt3", "zebra"]
    members = [(f"Set14_HR/{n}.png", n.encode()) for n in names] + [("Set14_HR/readme.txt", b"x")]
    server.put("Set14_HR.tar.gz", tar_bytes(members, tmp_path))
    out = dl.download_set(
        "set14", data_dir, mirror=server.url, allow_unverified=True, progress=False
    )
    assert out == data_dir / "set14"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in names)
    assert (out / "zebra.png").read_bytes() == b"zebra"
    dl.download_set("set14", data_dir, mirror=server.url, allow_unverified=True, progress=False)
    assert server.requests == ["/Set14_HR.tar.gz"]


# --------------------------------------------------------------------------- safe_extract


@pytest.fixture
def target(tmp_path):
    return tmp_path / "target"


def outside_files(tmp_path: Path, target: Path, archive: Path) -> list[Path]:
    return [
        p for p in tmp_path.rglob("*")
        if p != archive and p != target and target not in p.parents
    ]


def test_safe_extract_good_tar(tmp_path, target):
    archive = make_tar(
        tmp_path / "good.tar",
        [("./a/b.txt", b"b"), ("a/c.txt", b"c"), ("a/link", tarfile.SYMTYPE, "b.txt"),
         ("a/hard", tarfile.LNKTYPE, "a/c.txt")],
        mode="w",
    )
    written = dl.safe_extract(archive, target)
    assert {p.relative_to(target).as_posix() for p in written} == {
        "a/b.txt", "a/c.txt", "a/link", "a/hard"
    }
    assert (target / "a/link").read_bytes() == b"b" and (target / "a/link").is_symlink()
    assert (target / "a/hard").read_bytes() == b"c" and not (target / "a/hard").is_symlink()

    only = dl.safe_extract(archive, tmp_path / "t2", members_filter=lambda n: n == "a/c.txt")
    assert only == [tmp_path / "t2/a/c.txt"]


@pytest.mark.parametrize(
    "members, needle",
    [
        ([("ok.txt", b"ok"), ("../evil", b"evil")], "'../evil'"),
        ([("a/../../evil", b"evil")], "'a/../../evil'"),
        ([("{abs}", b"evil")], "absolute path"),
        ([("link", tarfile.SYMTYPE, "../outside")], "'link'"),
        ([("link", tarfile.SYMTYPE, "{abs}")], "'link'"),
        ([("link", tarfile.SYMTYPE, ".."), ("link/evil", b"evil")], "'link'"),
        ([("hard", tarfile.LNKTYPE, "../outside")], "'hard'"),
        ([("hard", tarfile.LNKTYPE, "{abs}")], "'hard'"),
        ([("dev", tarfile.CHRTYPE, "")], "device"),
        ([("fifo", tarfile.FIFOTYPE, "")], "'fifo'"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-rel", "symlink-abs",
         "symlink-then-write", "hardlink-rel", "hardlink-abs", "chardev", "fifo"],
)
def test_safe_extract_refuses_unsafe_tar(tmp_path, target, members, needle):
    victim = tmp_path / "outside"
    victim.write_bytes(b"untouched")
    absolute = str(tmp_path / "abs_evil")
    members = [tuple(x.replace("{abs}", absolute) if isinstance(x, str) else x for x in m)
               for m in members]
    needle = needle.replace("{abs}", absolute)
    archive = make_tar(tmp_path / "evil.tgz", members)

    with pytest.raises(DataError) as err:
        dl.safe_extract(archive, target)

    assert needle in str(err.value)
    assert "evil.tgz" in str(err.value)
    assert list(target.iterdir()) == []  # checked before anything was written
    assert victim.read_bytes() == b"untouched"
    assert sorted(outside_files(tmp_path, target, archive)) == [victim]


def test_safe_extract_refuses_chained_symlink_escape(tmp_path, target):
    # 'e' -> 'd/..' looks inside on paper, but 'd' -> '.' makes it the target's parent.
    archive = make_tar(
        tmp_path / "chain.tar",
        [("d", tarfile.SYMTYPE, "."), ("e", tarfile.SYMTYPE, "d/.."), ("e/evil", b"evil")],
        mode="w",
    )
    with pytest.raises(DataError, match="outside the target"):
        dl.safe_extract(archive, target)
    assert not (tmp_path / "evil").exists()
    assert outside_files(tmp_path, target, archive) == []
    assert not os.path.lexists(target / "e") and not os.path.lexists(target / "d")


def zip_with(path: Path, members: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.create_system = 3
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "members",
    [
        [("Set14/", b"", stat.S_IFDIR | 0o755), ("Set14/a.png", b"a", stat.S_IFREG | 0o644)],
        [("ok.txt", b"ok", None), ("../evil", b"evil", None)],
        [("..\\evil", b"evil", None)],
        [("{abs}", b"evil", None)],
        [("link", b"../outside", stat.S_IFLNK | 0o777)],
        [("fifo", b"", stat.S_IFIFO | 0o644)],
    ],
    ids=["good", "dotdot", "backslash-dotdot", "absolute", "symlink", "fifo"],
)
def test_safe_extract_refuses_zip(tmp_path, target, members):
    # No source is a zip: every zip, harmless or hostile, is refused before anything is written.
    absolute = str(tmp_path / "abs_evil")
    members = [(n.replace("{abs}", absolute), d, m) for n, d, m in members]
    archive = zip_with(tmp_path / "some.zip", members)
    with pytest.raises(DataError, match="some.zip is not a tar archive"):
        dl.safe_extract(archive, target)
    assert not target.exists() or list(target.iterdir()) == []
    assert outside_files(tmp_path, target, archive) == []


def test_safe_extract_filter_skips_unsafe_members(tmp_path, target):
    archive = make_tar(tmp_path / "mixed.tgz", [("../evil", b"evil"), ("keep.txt", b"keep")])
    written = dl.safe_extract(archive, target, members_filter=lambda n: n == "keep.txt")
    assert written == [target / "keep.txt"]
    assert not (tmp_path / "evil").exists()


def test_safe_extract_truncated_archive(tmp_path, target):
    good = make_tar(tmp_path / "t.tgz", [("a.bin", os.urandom(200_000))]).read_bytes()
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="damaged|not a tar archive"):
        dl.safe_extract(broken, target)
    assert list(target.rglob("*")) == []


# --------------------------------------------------------------------------- failures leave nothing


def test_failed_download_removes_the_folders_it_made(server, data_dir):
    # set14 from a mirror without the archive: no empty set14/ (nor data dir) left behind
    with pytest.raises(DataError, match="404"):
        dl.download_set("set14", data_dir, mirror=server.url, allow_unverified=True, progress=False)
    assert not data_dir.exists()
    data_dir.mkdir()
    (data_dir / "kodak24").mkdir()  # a folder that was there before stays
    with pytest.raises(DataError, match="404"):
        dl.download_set("set14", data_dir, mirror=server.url, allow_unverified=True, progress=False)
    with pytest.raises(DataError, match="404"):
        dl.download_set("bsd300-train", data_dir, mirror=server.url, checksums=BSD_TABLE, progress=False)
    assert sorted(p.name for p in data_dir.rglob("*")) == ["kodak24"]


def test_failed_download_keeps_the_files_already_verified(server, data_dir):
    server.put("kodim01.png", GOOD)
    table = {"kodak24/kodim01.png": sha(GOOD), "kodak24/kodim02.png": sha(OTHER)}  # 02 not served
    with pytest.raises(DataError, match="kodim02.png.*404"):
        dl.download_set("kodak24", data_dir, mirror=server.url, checksums=table, progress=False)
    assert sorted(p.name for p in data_dir.rglob("*")) == ["kodak24", "kodim01.png"]
    server.put("kodim02.png", OTHER)
    dl.download_set("kodak24", data_dir, mirror=server.url, checksums=table, progress=False)
    assert server.requests == ["/kodim01.png", "/kodim02.png", "/kodim02.png"]  # 01 not fetched again


def test_data_dir_that_cannot_be_made_is_one_line(tmp_path, server, monkeypatch):
    from typer.testing import CliRunner

    from benchmarks.cli import app

    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a folder")
    server.put("kodim01.png", GOOD)
    with pytest.raises(DataError, match="could not write kodak24 into .*file/x.*N2N_DATA"):
        dl.download_set("kodak24", blocker / "x", mirror=server.url, progress=False,
                        checksums={"kodak24/kodim01.png": sha(GOOD)})
    assert server.requests == []
    monkeypatch.setenv("N2N_DATA", str(blocker / "x"))
    result = CliRunner().invoke(app, ["download", "kodak24", "--mirror", server.url])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: could not write kodak24")
    assert blocker.read_bytes() == b"not a folder"


def test_file_mirror(tmp_path, data_dir):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "kodim01.png").write_bytes(GOOD)
    table = {"kodak24/kodim01.png": sha(GOOD)}
    dl.download_set("kodak24", data_dir, mirror=folder.as_uri(), checksums=table, progress=False)
    assert (data_dir / "kodak24/kodim01.png").read_bytes() == GOOD

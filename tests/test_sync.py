"""Code sync (exq/ssh/sync.py): `excluded` alone, then sync_tree against a real sshd."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import asyncssh
import pytest
from sshhosts import SshHost, skip_reason, start_hosts

from exq.errors import WorkerError
from exq.ssh.sync import SyncStats, excluded, sync_tree

EXCLUDE = ["*.pt", "data/", "checkpoints/**", ".git"]
UNICODE = "with space ünïcode ✓.txt"
LIST = """\
import json, os, sys
root, out = sys.argv[1], {}
for d, dirs, files in os.walk(root):
    for name in files + dirs:
        st = os.lstat(os.path.join(d, name))
        rel = os.path.relpath(os.path.join(d, name), root) + ("/" if name in dirs else "")
        body = "" if name in dirs else open(os.path.join(d, name), "rb").read().decode()
        out[rel] = [oct(st.st_mode & 0o777), body, int(st.st_mtime)]
print(json.dumps(out))
"""


@pytest.mark.parametrize(("relpath", "patterns", "expected"), [
    ("model.pt", ["*.pt"], True),
    ("a/b/model.pt", ["*.pt"], True),
    ("./a/model.pt", ["*.pt"], True),
    ("Model.PT", ["*.pt"], False),  # case-sensitive
    ("data/x.bin", ["data/"], True),
    ("src/data/x.bin", ["data/"], True),
    ("data/", ["data/"], True),
    ("data", ["data/"], False),  # a file named data: `data/` matches directories only
    ("src/data", ["data"], True),
    ("checkpoints/a/b.pt", ["checkpoints/**"], True),
    ("checkpoints/", ["checkpoints/**"], False),  # the directory itself stays
    ("src/checkpoints/x", ["checkpoints/**"], False),  # a pattern with a slash is anchored
    (".git/HEAD", [".git"], True),
    ("a/.git/objects/x", [".git"], True),
    (".gitignore", [".git"], False),
    ("data/x", ["/data"], True),
    ("src/data/x", ["/data"], False),
    ("logs/x", ["**/logs"], True),
    ("a/b/logs/x", ["**/logs"], True),
    ("ckpt/a/b.txt", ["ckpt/*.txt"], True),  # `*` also matches `/`
    ("src/train.py", ["*.pt", "data/", "", "/"], False),
    ("src/train.py", [], False),
])
def test_excluded(relpath: str, patterns: list[str], expected: bool) -> None:
    assert excluded(relpath, patterns) is expected


# --- against a real sshd -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with start_hosts(tmp_path_factory.mktemp("ssh"), [("h1", "1x24GiB")]) as hosts:
        yield hosts["h1"]


def sync(host: SshHost, local: Path, remote: str, exclude: Sequence[str] = EXCLUDE, as_uid: int = 0) -> SyncStats:
    """Connect, sync (as `as_uid` locally when non-zero), disconnect; bounded."""
    async def go() -> SyncStats:
        async with asyncssh.connect(**host.connect_options()) as conn, conn.start_sftp_client() as sftp:
            if as_uid:
                os.seteuid(as_uid)
            try:
                return await sync_tree(sftp, local, remote, exclude)
            finally:
                if as_uid:
                    os.seteuid(0)

    return asyncio.run(asyncio.wait_for(go(), 20))


def remote_tree(host: SshHost, remote: str) -> dict[str, list[object]]:
    """{relpath (dirs end in /): [mode, text, mtime]} of `remote`, read on the host over ssh."""
    out = host.run(f"/usr/bin/python3 -c {shlex.quote(LIST)} {shlex.quote(remote)}").stdout
    tree: dict[str, list[object]] = json.loads(out)
    return tree


def write(root: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def make_tree(root: Path) -> None:
    write(root, "train.py", "print('train')\n")
    write(root, "run.sh", "#!/bin/sh\necho run\n", 0o755)
    write(root, "pkg/__init__.py", "")
    write(root, "pkg/deep/er/x.txt", "deep\n")
    write(root, UNICODE, "ü\n")
    write(root, "model.pt", "weights")
    write(root, "checkpoints/step1/w.pt", "w")
    write(root, "checkpoints/log.txt", "log")
    write(root, "data/train.bin", "big")
    write(root, "pkg/data/shard.bin", "big")
    write(root, ".git/HEAD", "ref: main\n")
    (root / "link.py").symlink_to("train.py")
    (root / "outside").symlink_to("/etc/passwd")


def test_first_sync_uploads_everything_then_nothing(host: SshHost, tmp_path: Path) -> None:
    make_tree(tmp_path)
    remote = str(host.home / "a" / "b" / "code")  # parents created
    stats = sync(host, tmp_path, remote)
    assert (stats.files_seen, stats.files_uploaded, stats.skipped_symlinks) == (5, 5, 2)
    assert stats.skipped_excluded == 6  # model.pt, checkpoints/step1/, checkpoints/log.txt, data/, pkg/data/, .git
    tree = remote_tree(host, remote)
    assert set(tree) == {"train.py", "run.sh", "pkg/", "pkg/__init__.py", "pkg/deep/", "pkg/deep/er/",
                         "pkg/deep/er/x.txt", UNICODE, "checkpoints/"}
    for rel, (mode, body, mtime) in tree.items():
        local = tmp_path / rel
        if rel.endswith("/"):
            assert mode == "0o700", rel
        else:
            assert (mode, body, mtime) == (oct(local.stat().st_mode & 0o777), local.read_text(),
                                           int(local.stat().st_mtime)), rel
    assert tree["run.sh"][0] == "0o755" and tree["train.py"][0] == "0o644"
    assert host.run(f"{shlex.quote(remote)}/run.sh").stdout == "run\n"
    assert host.run(f"stat -c %a {host.home / 'a'}").stdout.strip() == "700"

    again = sync(host, tmp_path, remote)
    assert (again.files_seen, again.files_uploaded, again.bytes_uploaded) == (5, 0, 0)
    assert stats.bytes_uploaded == sum(len((tmp_path / r).read_bytes()) for r in tree if not r.endswith("/"))


def test_only_changed_files_are_uploaded(host: SshHost, tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        write(tmp_path, f"{name}.txt", f"{name}-1\n")
    remote = str(host.home / "changed")
    assert sync(host, tmp_path, remote).files_uploaded == 4

    write(tmp_path, "a.txt", "a-2\n")  # same size, new content and mtime
    st = (tmp_path / "a.txt").stat()
    os.utime(tmp_path / "a.txt", (st.st_atime, st.st_mtime + 5))
    stats = sync(host, tmp_path, remote)
    assert (stats.files_uploaded, stats.bytes_uploaded) == (1, 4)
    assert remote_tree(host, remote)["a.txt"][1] == "a-2\n"

    os.utime(tmp_path / "b.txt", (st.st_atime, st.st_mtime + 10))  # touched only
    assert sync(host, tmp_path, remote).files_uploaded == 1
    (tmp_path / "c.txt").chmod(0o755)  # executable bit only
    assert sync(host, tmp_path, remote).files_uploaded == 1
    tree = remote_tree(host, remote)
    assert tree["b.txt"][2] == int(st.st_mtime) + 10 and tree["c.txt"][0] == "0o755"
    assert sync(host, tmp_path, remote).files_uploaded == 0


def test_remote_files_not_in_the_tree_are_left_alone(host: SshHost, tmp_path: Path) -> None:
    remote = str(host.home / "extra")
    host.run(f"mkdir -p {remote}/pkg {remote}/data && echo old > {remote}/pkg/old.py && "
             f"echo mine > {remote}/extra.txt && echo kept > {remote}/data/x.bin && echo stale > {remote}/a.py")
    write(tmp_path, "a.py", "new\n")
    write(tmp_path, "pkg/b.py", "b\n")
    write(tmp_path, "data/x.bin", "excluded\n")
    assert sync(host, tmp_path, remote).files_uploaded == 2
    tree = remote_tree(host, remote)
    assert {rel: v[1] for rel, v in tree.items() if not rel.endswith("/")} == {
        "a.py": "new\n", "pkg/b.py": "b\n", "pkg/old.py": "old\n", "extra.txt": "mine\n", "data/x.bin": "kept\n"}


def test_unreadable_local_file_names_it(host: SshHost) -> None:
    local = host.home / "local"  # root reads any file: sync as the host's user, who cannot read `secret`
    shutil.rmtree(local, ignore_errors=True)
    write(local, "ok.txt", "ok\n")
    secret = write(local, "sub/secret.txt", "secret\n", 0o000)
    remote = str(host.home / "unreadable")
    with pytest.raises(WorkerError, match=rf"cannot read {re.escape(str(secret))}: PermissionError"):
        sync(host, local, remote, as_uid=host.uid if os.geteuid() == 0 else 0)
    assert not [rel for rel in remote_tree(host, remote) if "secret" in rel or "exq-tmp" in rel]


def test_remote_permission_denied_names_the_file(host: SshHost, tmp_path: Path) -> None:
    write(tmp_path, "pkg/a.py", "a\n")
    remote = str(host.home / "readonly")
    host.run(f"mkdir -p {remote}/pkg && chmod 555 {remote}/pkg")
    with pytest.raises(WorkerError, match=re.escape(f"upload {tmp_path}/pkg/a.py to {remote}/pkg/a.py: ") + ".*denied"):
        sync(host, tmp_path, remote)
    with pytest.raises(WorkerError, match=r"create /root/exq-sync/x: .*denied"):
        sync(host, tmp_path, "/root/exq-sync/x")

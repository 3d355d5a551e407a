"""Tests for protoshim._pyuv_build: patch applier, failure messages, no-op and cached paths.

Nothing here downloads or compiles unless PROTOSHIM_BUILD_TESTS=1 is set; the
end-to-end install test runs only when a wheel for this interpreter is cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

from protoshim import _pyuv_build as pb

POSIX = pytest.mark.skipif(os.name != "posix", reason="uses POSIX shell wrappers and paths")


def _pristine_sdist() -> Path | None:
    path = pb.default_cache_dir() / "sdist" / pb.SDIST_NAME
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == pb.SDIST_SHA256:
        return path
    return None


def _this_target() -> pb._Target:
    return pb._probe(sys.executable)


# --------------------------------------------------------------------------- the shipped patch


def test_shipped_patch_touches_the_three_files() -> None:
    files = pb._parse_patch(pb._patch_text())
    assert [f.path for f in files] == ["src/abstract.c", "src/common.c", "src/handle.c"]
    assert all(len(f.hunks) == 1 for f in files)


def test_patch_applies_cleanly_to_the_pristine_sdist(tmp_path: Path) -> None:
    sdist = _pristine_sdist()
    if sdist is None:
        pytest.skip(
            f"no verified {pb.SDIST_NAME} in {pb.default_cache_dir() / 'sdist'}; "
            "the first build caches it (python -m protoshim._pyuv_build where pyuv is missing)"
        )
    tree = pb._unpack(sdist, tmp_path)
    handle_c = tree / "src" / "handle.c"
    assert "Py_REFCNT(self) = refcnt;" in handle_c.read_text()

    assert pb.apply_patch(pb._patch_text(), tree) == [
        "src/abstract.c",
        "src/common.c",
        "src/handle.c",
    ]

    assert "Py_SET_REFCNT(self, refcnt);" in handle_c.read_text()
    assert "Py_REFCNT(self) = refcnt;" not in handle_c.read_text()
    common_c = (tree / "src" / "common.c").read_text()
    assert "PyUnicode_EncodeUTF8" not in common_c
    assert 'PyUnicode_AsEncodedString(unicode, "utf-8", "surrogateescape")' in common_c
    abstract_c = (tree / "src" / "abstract.c").read_text()
    assert "PyGILState_Ensure();\n    PyMem_Free(handle->data);" in abstract_c
    # Applying twice must fail loudly rather than patch patched code.
    with pytest.raises(pb.PyuvBuildError, match="patch does not apply"):
        pb.apply_patch(pb._patch_text(), tree)


def test_unpack_drops_archive_owners(tmp_path: Path) -> None:
    # The real sdist records a foreign owner; extracting as root must not keep it.
    src = tmp_path / "pyuv-1.4.0"
    src.mkdir()
    (src / "setup.py").write_text("# setup\n")
    archive = tmp_path / "pyuv.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="pyuv-1.4.0", filter=lambda info: _owned_by(info, 4242))
    tree = pb._unpack(archive, tmp_path / "out")
    assert (tree / "setup.py").read_text() == "# setup\n"
    if os.name == "posix" and os.geteuid() == 0:
        assert (tree / "setup.py").stat().st_uid == 0


def _owned_by(info: tarfile.TarInfo, uid: int) -> tarfile.TarInfo:
    info.uid = info.gid = uid
    return info


# --------------------------------------------------------------------------- the applier

_DIFF = """\
Free text before the first file is ignored.

diff --git a/src/x.c b/src/x.c
--- a/src/x.c
+++ b/src/x.c
@@ -2,3 +2,3 @@ int f(void)
 {
-    return 1;
+    return 2;
 }
"""


def _tree(tmp_path: Path, text: str) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.c").write_bytes(text.encode())
    return tmp_path


def test_applier_replaces_lines(tmp_path: Path) -> None:
    root = _tree(tmp_path, "int f(void)\n{\n    return 1;\n}\n")
    assert pb.apply_patch(_DIFF, root) == ["src/x.c"]
    assert (root / "src" / "x.c").read_text() == "int f(void)\n{\n    return 2;\n}\n"


def test_applier_keeps_crlf_line_endings(tmp_path: Path) -> None:
    root = _tree(tmp_path, "int f(void)\r\n{\r\n    return 1;\r\n}\r\n")
    pb.apply_patch(_DIFF, root)
    assert (root / "src" / "x.c").read_bytes() == b"int f(void)\r\n{\r\n    return 2;\r\n}\r\n"


def test_applier_keeps_form_feeds_and_non_utf8_bytes(tmp_path: Path) -> None:
    root = _tree(tmp_path, "")
    (root / "src" / "x.c").write_bytes(b"int f(void)\n{\n    return 1;\n}\n\x0c\n/* \xe9 */\n")
    pb.apply_patch(_DIFF, root)
    assert (root / "src" / "x.c").read_bytes() == (
        b"int f(void)\n{\n    return 2;\n}\n\x0c\n/* \xe9 */\n"
    )


def test_applier_rejects_drifted_context_and_writes_nothing(tmp_path: Path) -> None:
    root = _tree(tmp_path, "int f(void)\n{\n    return 7;\n}\n")
    (root / "src" / "y.c").write_text("a\n")
    two_files = _DIFF + "--- a/src/y.c\n+++ b/src/y.c\n@@ -1 +1 @@\n-a\n+b\n"
    # y.c would patch fine, but x.c fails first: neither may change.
    with pytest.raises(pb.PyuvBuildError) as info:
        pb.apply_patch(two_files, root)
    assert str(info.value) == (
        "patch does not apply: src/x.c hunk 1 expects 'return 1;' at line 3, found 'return 7;'"
    )
    assert (root / "src" / "y.c").read_text() == "a\n"
    assert (root / "src" / "x.c").read_text() == "int f(void)\n{\n    return 7;\n}\n"


def test_applier_applies_hunks_at_their_stated_lines_only(tmp_path: Path) -> None:
    # The same lines one line further down: a fuzzy tool would apply, this must not.
    root = _tree(tmp_path, "/* moved */\nint f(void)\n{\n    return 1;\n}\n")
    with pytest.raises(pb.PyuvBuildError, match="at line 2"):
        pb.apply_patch(_DIFF, root)


def test_applier_rejects_missing_file_and_escaping_path(tmp_path: Path) -> None:
    with pytest.raises(pb.PyuvBuildError, match=r"src/x\.c does not exist"):
        pb.apply_patch(_DIFF, tmp_path)
    escaping = _DIFF.replace("a/src/x.c", "a/../x.c").replace("b/src/x.c", "b/../x.c")
    with pytest.raises(pb.PyuvBuildError, match="outside the tree"):
        pb.apply_patch(escaping, tmp_path)


def test_applier_rejects_text_without_hunks(tmp_path: Path) -> None:
    with pytest.raises(pb.PyuvBuildError, match="no file changes"):
        pb.apply_patch("just words\n", tmp_path)
    with pytest.raises(pb.PyuvBuildError, match="cut short"):
        pb.apply_patch(_DIFF.rsplit(" }", 1)[0], _tree(tmp_path, "int f(void)\n{\n"))


# --------------------------------------------------------------------------- failure messages

# Trimmed from real `pip wheel` runs of the unpatched and the patched sdist.
_LVALUE_LOG = """\
  gcc -Wsign-compare -DNDEBUG -g -fwrapv -O3 -Wall -fPIC -c src/pyuv.c -o build/pyuv.o
  src/common.c: In function 'pyuv_PyUnicode_EncodeFSDefault':
  src/common.c:42:16: warning: implicit declaration of function 'PyUnicode_EncodeUTF8'
  In file included from src/pyuv.c:8:
  src/handle.c: In function 'resurrect_object':
  src/handle.c:17:21: error: lvalue required as left operand of assignment
     17 |     Py_REFCNT(self) = refcnt;
        |                     ^
  error: command '/usr/bin/gcc' failed with exit code 1
  ERROR: Failed building wheel for pyuv
"""

_NO_HEADERS_LOG = """\
  In file included from src/pyuv.c:2:
  src/pyuv.h:7:10: fatal error: Python.h: No such file or directory
      7 | #include <Python.h>
  compilation terminated.
  error: command '/usr/bin/gcc' failed with exit code 1
"""

_NO_COMPILER_LOG = """\
  building 'pyuv._cpyuv' extension
  gcc -pthread -Wsign-compare -fPIC -c deps/libuv/src/fs-poll.c -o build/fs-poll.o
  error: command 'gcc' failed: No such file or directory
  ERROR: Failed building wheel for pyuv
"""

_NO_SETUPTOOLS_LOG = """\
  WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(...)'
  ERROR: Could not find a version that satisfies the requirement setuptools>=40.8.0
"""


def test_classify_compile_error_quotes_the_first_error_line() -> None:
    assert pb.classify_build_failure(_LVALUE_LOG) == (
        "compile error: src/handle.c:17:21: error: lvalue required as left operand of assignment"
    )


def test_classify_missing_headers() -> None:
    message = pb.classify_build_failure(_NO_HEADERS_LOG)
    assert message.startswith("Python headers missing")
    assert "python3-dev" in message


def test_classify_missing_compiler() -> None:
    message = pb.classify_build_failure(_NO_COMPILER_LOG)
    assert message.startswith("no C compiler found ('gcc' cannot be run)")
    assert "apt-get install gcc" in message
    assert "build-essential" in message


def test_classify_build_requirements_download() -> None:
    assert pb.classify_build_failure(_NO_SETUPTOOLS_LOG) == (
        "download failed: cannot fetch setuptools from the package index (NewConnectionError)"
    )


def test_classify_unknown_build_failure_falls_back_to_an_error_line() -> None:
    log = "running bdist_wheel\nerror: something odd happened\nmore\n"
    assert pb.classify_build_failure(log) == "build failed: error: something odd happened"


def test_classify_download_failures() -> None:
    offline = (
        "WARNING: Retrying (Retry(total=4, connect=None)) after connection broken by "
        "'NewConnectionError(\"Failed to establish a new connection: [Errno 111]\")'\n"
        "ERROR: No matching distribution found for pyuv==1.4.0\n"
    )
    assert pb.classify_download_failure(offline) == (
        "download failed: cannot reach the package index (NewConnectionError)"
    )
    silent = "ERROR: No matching distribution found for pyuv==1.4.0\n"
    assert "found no pyuv==1.4.0 sdist" in pb.classify_download_failure(silent)
    other = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left\n"
    assert pb.classify_download_failure(other) == f"download failed: {other.strip()}"


def test_error_message_is_one_line() -> None:
    assert str(pb.PyuvBuildError("compile error:\n  x.c:1: error: y\n")) == (
        "compile error: x.c:1: error: y"
    )


# --------------------------------------------------------------------------- preflight checks


def test_missing_compiler_is_reported_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/bin/gcc -pthread")
    with pytest.raises(pb.PyuvBuildError, match=r"no C compiler found \(looked for '/nonexist"):
        pb._check_compiler(_this_target())


def test_missing_headers_are_reported_before_building(tmp_path: Path) -> None:
    target = pb._Target(
        python="/x/python", implementation="cpython", version=(3, 11),
        abi_key="k", include=tmp_path, cc="gcc",
    )  # fmt: skip
    with pytest.raises(pb.PyuvBuildError) as info:
        pb._check_headers(target)
    assert f"no Python.h in {tmp_path}" in str(info.value)
    assert "libpython3.11-dev" in str(info.value)


def test_old_or_foreign_interpreters_are_refused() -> None:
    base = _this_target()
    with pytest.raises(pb.PyuvBuildError, match=r"3\.9 or newer"):
        pb._check_target(dataclasses.replace(base, version=(3, 8)))
    with pytest.raises(pb.PyuvBuildError, match="is pypy"):
        pb._check_target(dataclasses.replace(base, implementation="pypy"))


def test_default_cache_dir_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROTOSHIM_CACHE", str(tmp_path / "pc"))
    assert pb.default_cache_dir() == tmp_path / "pc"
    monkeypatch.delenv("PROTOSHIM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pb.default_cache_dir() == tmp_path / "xdg" / "protoshim"


def test_wheels_are_keyed_by_abi_and_patch(tmp_path: Path) -> None:
    target = _this_target()
    wheel_dir = pb._wheel_dir(tmp_path, target)
    assert wheel_dir.parent.parent == tmp_path / "wheels"
    assert wheel_dir.name == target.abi_key
    assert wheel_dir.parent.name.startswith("pyuv-1.4.0-")


# --------------------------------------------------------------------------- entry points


@POSIX
def test_pyuv_works_is_false_without_pyuv(tmp_path: Path) -> None:
    # -S leaves site-packages off sys.path, so this real interpreter cannot see pyuv.
    wrapper = tmp_path / "python-without-site"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    assert pb.pyuv_works(str(wrapper)) is False
    assert pb.pyuv_works(str(tmp_path / "no-such-python")) is False


def test_install_is_a_no_op_when_pyuv_works(tmp_path: Path) -> None:
    if not pb.pyuv_works(sys.executable):
        pytest.skip("pyuv is not installed here; run `python -m protoshim._pyuv_build` first")
    message = pb.install_pyuv(python=sys.executable, cache_dir=tmp_path / "cache", quiet=True)
    assert message == f"pyuv already works in {sys.executable}; nothing to do"
    assert not (tmp_path / "cache").exists()


def test_main_reports_failure_in_one_line_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "no-such-python")
    assert pb.main(["--python", missing, "--cache-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: cannot run {missing}: no such file\n"


def test_module_runs_as_a_script_without_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-python")
    proc = subprocess.run(
        [sys.executable, "-m", "protoshim._pyuv_build", "--python", missing, "--quiet"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: cannot run {missing}: no such file"]


# --------------------------------------------------------------------------- real installs

_ECHO = """\
import pyuv
loop = pyuv.Loop()
server = pyuv.TCP(loop)
server.bind(("127.0.0.1", 0))
got = []
def on_read(conn, data, error):
    if data is None:
        conn.close()
    else:
        conn.write(data)
def on_connection(srv, error):
    conn = pyuv.TCP(loop)
    srv.accept(conn)
    conn.start_read(on_read)
server.listen(on_connection)
client = pyuv.TCP(loop)
def on_client_read(c, data, error):
    got.append(data or b"")
    if b"".join(got) == b"ping" * 100:
        c.close()
        server.close()
def on_connect(c, error):
    c.start_read(on_client_read)
    c.write(b"ping" * 100)
client.connect(server.getsockname(), on_connect)
loop.run()
print(b"".join(got).decode()[:8])
"""


def _fresh_venv(path: Path) -> str:
    venv.create(path, with_pip=True)
    return str(path / ("Scripts" if os.name == "nt" else "bin") / "python")


def _install_and_echo(tmp_path: Path, cache: Path) -> str:
    python = _fresh_venv(tmp_path / "venv")
    assert pb.pyuv_works(python) is False
    message = pb.install_pyuv(python=python, cache_dir=cache, quiet=True)
    assert pb.pyuv_works(python) is True
    echo = subprocess.run(
        [python, "-c", _ECHO], capture_output=True, text=True, timeout=60, check=False
    )
    assert (echo.returncode, echo.stdout) == (0, "pingping\n"), echo.stderr
    again = pb.install_pyuv(python=python, cache_dir=cache, quiet=True)
    assert again == f"pyuv already works in {python}; nothing to do"
    return message


@POSIX
def test_install_from_cached_wheel_into_a_fresh_venv(tmp_path: Path) -> None:
    cache = pb.default_cache_dir()
    wheel = pb._cached_wheel(pb._wheel_dir(cache, _this_target()))
    if wheel is None:
        pytest.skip(f"no cached pyuv wheel for this interpreter under {cache / 'wheels'}")
    message = _install_and_echo(tmp_path, cache)
    assert message.endswith(f"from the cached wheel ({wheel})")


@POSIX
@pytest.mark.skipif(
    os.environ.get("PROTOSHIM_BUILD_TESTS") != "1",
    reason="downloads and compiles pyuv (needs the package index, ~20 s); "
    "set PROTOSHIM_BUILD_TESTS=1 to run",
)
def test_download_patch_build_install_from_scratch(tmp_path: Path) -> None:
    message = _install_and_echo(tmp_path, tmp_path / "cache")
    assert "from a freshly built wheel" in message
    assert (tmp_path / "cache" / "sdist" / pb.SDIST_NAME).is_file()

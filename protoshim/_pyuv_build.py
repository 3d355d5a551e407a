"""Build pyuv 1.4.0 from its patched sdist and install it into a Python interpreter.

pyuv's last release does not compile on CPython 3.10+, and PyPI has no wheels for
it. :func:`install_pyuv` downloads the sdist with pip, checks its sha256, applies
``patches/pyuv-1.4.0.patch``, builds a wheel with the target interpreter's pip,
caches the wheel, and installs it. Run it as ``python -m protoshim._pyuv_build``.
See docs/pyuv-build.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "PYUV_VERSION",
    "SDIST_SHA256",
    "PyuvBuildError",
    "apply_patch",
    "classify_build_failure",
    "classify_download_failure",
    "default_cache_dir",
    "install_pyuv",
    "main",
    "pyuv_works",
]

PYUV_VERSION = "1.4.0"
SDIST_NAME = f"pyuv-{PYUV_VERSION}.tar.gz"
# The digest PyPI publishes for pyuv-1.4.0.tar.gz; the patch is written against it.
SDIST_SHA256 = "caea2004d1125fe17cbde3c211c8abc72844e9b8dd7dfa007711e98fbc96fbc2"
PATCH_PATH = Path(__file__).with_name("patches") / f"pyuv-{PYUV_VERSION}.patch"

# Measured 9-24 s on a busy 2-core machine with gcc 12, mostly compiling the bundled libuv.
BUILD_SECONDS_ESTIMATE = 20

# Each subprocess gets a generous bound so a hung pip or compiler cannot hang us forever.
_PIP_TIMEOUT = 900
_CHECK_TIMEOUT = 120

_CHECK_SNIPPET = "import pyuv; pyuv.Loop().run()"

_PROBE_SNIPPET = """\
import json, sys, sysconfig
print(json.dumps({
    "implementation": sys.implementation.name,
    "version": list(sys.version_info[:2]),
    "abi_key": sysconfig.get_config_var("SOABI")
        or sys.implementation.cache_tag + "-" + sysconfig.get_platform(),
    "include": sysconfig.get_paths()["include"],
    "cc": sysconfig.get_config_var("CC") or "",
}))
"""


class PyuvBuildError(Exception):
    """Report why pyuv could not be installed, in one line."""

    def __init__(self, message: str) -> None:
        # Callers print the message as is, so keep it to a single line.
        super().__init__(" ".join(message.split()))


@dataclasses.dataclass(frozen=True)
class _Target:
    python: str
    implementation: str
    version: tuple[int, int]
    abi_key: str
    include: Path
    cc: str


# --------------------------------------------------------------------------- helpers


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"protoshim: {message}", file=sys.stderr, flush=True)


def _run(
    args: Sequence[str], *, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``args``, capturing stdout and stderr together as text."""
    try:
        return subprocess.run(
            list(args),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise PyuvBuildError(f"cannot run {args[0]}: no such file") from exc
    except subprocess.TimeoutExpired as exc:
        raise PyuvBuildError(
            f"{shlex.join(args[:4])} ... did not finish within {timeout:.0f} s"
        ) from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _patch_text() -> str:
    return PATCH_PATH.read_text(encoding="utf-8")


def default_cache_dir() -> Path:
    """Return protoshim's cache root: ``$PROTOSHIM_CACHE``, else ``~/.cache/protoshim``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set. Wheels live in ``wheels/``
    below the root and the downloaded sdist in ``sdist/``.
    """
    override = os.environ.get("PROTOSHIM_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "protoshim"


# --------------------------------------------------------------------------- checks


def pyuv_works(python: str = sys.executable) -> bool:
    """Return whether ``python`` can import pyuv and run an empty loop.

    The check runs in a subprocess because the target may be another environment,
    and a broken extension may crash the interpreter rather than raise.
    """
    with tempfile.TemporaryDirectory(prefix="protoshim-check-") as empty:
        # An empty cwd keeps a stray ./pyuv source folder from shadowing the install.
        try:
            proc = _run([python, "-c", _CHECK_SNIPPET], timeout=_CHECK_TIMEOUT, cwd=Path(empty))
        except PyuvBuildError:
            return False
    return proc.returncode == 0


def _probe(python: str) -> _Target:
    proc = _run([python, "-c", _PROBE_SNIPPET], timeout=_CHECK_TIMEOUT)
    if proc.returncode != 0:
        raise PyuvBuildError(f"cannot run {python}: {_last_line(proc.stdout)}")
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise PyuvBuildError(f"unexpected output from {python}: {_last_line(proc.stdout)}") from exc
    major, minor = info["version"]
    return _Target(
        python=python,
        implementation=str(info["implementation"]),
        version=(int(major), int(minor)),
        abi_key=str(info["abi_key"]),
        include=Path(info["include"]),
        cc=str(info["cc"]),
    )


def _check_target(target: _Target) -> None:
    """Fail early, with the fix, on what would otherwise break deep inside the build."""
    if target.implementation != "cpython":
        raise PyuvBuildError(
            f"pyuv is a CPython extension; {target.python} is {target.implementation}"
        )
    if target.version < (3, 9):
        # Py_SET_REFCNT, used by the patch, appeared in 3.9.
        raise PyuvBuildError(
            f"the patched pyuv needs CPython 3.9 or newer; {target.python} is "
            f"{target.version[0]}.{target.version[1]}"
        )
    proc = _run([target.python, "-m", "pip", "--version"], timeout=_CHECK_TIMEOUT)
    if proc.returncode != 0:
        raise PyuvBuildError(
            f"pip is not available in {target.python}; run `{target.python} -m ensurepip`"
        )


def _check_compiler(target: _Target) -> None:
    # setuptools takes the compiler from $CC, else from the interpreter's build config.
    cc_line = os.environ.get("CC") or target.cc or "cc"
    words = shlex.split(cc_line)
    compiler = words[0] if words else "cc"
    if shutil.which(compiler) is None:
        raise PyuvBuildError(
            f"no C compiler found (looked for {compiler!r}); install one, e.g. "
            "`apt-get install gcc` (Debian packages gcc or build-essential)"
        )


def _check_headers(target: _Target) -> None:
    if not (target.include / "Python.h").is_file():
        ver = f"{target.version[0]}.{target.version[1]}"
        raise PyuvBuildError(
            f"Python headers missing (no Python.h in {target.include}); install them, e.g. "
            f"`apt-get install python3-dev` (Debian package libpython{ver}-dev)"
        )


# --------------------------------------------------------------------------- failure text


_NETWORK_MARKERS = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "SSLError",
)
# pip says only this when the index answered nothing, e.g. with retries off and no network.
_NOT_FOUND_MARKERS = (
    "No matching distribution found",
    "Could not find a version that satisfies",
)


def _network_marker(output: str) -> str | None:
    return next((marker for marker in _NETWORK_MARKERS if marker in output), None)


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _first_line_matching(output: str, pattern: re.Pattern[str]) -> str | None:
    for line in output.splitlines():
        if pattern.search(line):
            return line.strip()
    return None


_ERROR_LINE = re.compile(r"^ERROR: |^error: ", re.IGNORECASE)


def classify_download_failure(output: str) -> str:
    """Return the one-line reason for a failed ``pip download`` from its output."""
    marker = _network_marker(output)
    if marker:
        return f"download failed: cannot reach the package index ({marker})"
    if any(marker in output for marker in _NOT_FOUND_MARKERS):
        return (
            f"download failed: pip found no pyuv=={PYUV_VERSION} sdist; "
            "is the package index reachable from here?"
        )
    line = _first_line_matching(output, _ERROR_LINE) or _last_line(output)
    return f"download failed: {line}"


# The compiler's own diagnostics: "file.c:17:21: error: ..." or "... fatal error: ...".
_COMPILER_ERROR = re.compile(r"(^|\s)(fatal )?error: ")
_COMPILER_LOCATED_ERROR = re.compile(r":\d+(:\d+)?: (fatal )?error: ")
_MISSING_HEADER = re.compile(r"fatal error: (Python\.h|pyconfig\.h): No such file")
_MISSING_COMPILER = re.compile(
    r"command '?([^' ]+)'? failed: No such file or directory"
    r"|error: command '([^']+)' failed with exit (status|code) 127"
    r"|unable to execute '?([^' :]+)'?: No such file"
)


def classify_build_failure(output: str) -> str:
    """Return the one-line reason for a failed ``pip wheel`` of pyuv from its output."""
    if _MISSING_HEADER.search(output):
        return (
            "Python headers missing (the compiler cannot find Python.h); install them, "
            "e.g. `apt-get install python3-dev`"
        )
    missing = _MISSING_COMPILER.search(output)
    if missing:
        name = next(g for g in (missing.group(1), missing.group(2), missing.group(4)) if g)
        return (
            f"no C compiler found ({name!r} cannot be run); install one, e.g. "
            "`apt-get install gcc` (Debian packages gcc or build-essential)"
        )
    located = _first_line_matching(output, _COMPILER_LOCATED_ERROR)
    if located:
        return f"compile error: {located}"
    marker = _network_marker(output)
    if marker or any(m in output for m in _NOT_FOUND_MARKERS):
        # An isolated build fetches setuptools from the index first.
        reason = marker or "no matching distribution"
        return f"download failed: cannot fetch setuptools from the package index ({reason})"
    line = _first_line_matching(output, _COMPILER_ERROR) or _last_line(output)
    return f"build failed: {line}"


# --------------------------------------------------------------------------- patching

# A small, strict applier for unified diffs. ``patch`` is missing from slim images and
# ``git apply`` needs git; this file pins the sdist by sha256, so exact matching (no
# fuzz, no offsets) is all that is needed and turns any drift into a clear error.

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclasses.dataclass
class _Hunk:
    old_start: int
    old_count: int
    new_count: int
    lines: list[str]


@dataclasses.dataclass
class _FilePatch:
    path: str
    hunks: list[_Hunk]


def _strip_prefix(name: str) -> str:
    name = name.split("\t", 1)[0].strip()
    if name.startswith(("a/", "b/")):
        name = name[2:]
    return name


def _split_lines(text: str) -> list[str]:
    """Split at line feeds only; ``str.splitlines`` also splits at form feeds and more."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _parse_patch(text: str) -> list[_FilePatch]:
    lines = _split_lines(text)
    files: list[_FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not (line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")):
            i += 1  # free text and "diff --git" lines carry nothing we need
            continue
        path = _strip_prefix(lines[i + 1][4:])
        if path == "/dev/null" or _strip_prefix(line[4:]) == "/dev/null":
            raise PyuvBuildError(f"patch does not apply: cannot create or delete {path}")
        current = _FilePatch(path=path, hunks=[])
        files.append(current)
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            match = _HUNK_HEADER.match(lines[i])
            if match is None:
                raise PyuvBuildError(f"patch does not apply: bad hunk header {lines[i]!r}")
            old_count = int(match.group(2) or "1")
            new_count = int(match.group(4) or "1")
            hunk = _Hunk(int(match.group(1)), old_count, new_count, [])
            i += 1
            seen_old = seen_new = 0
            while seen_old < old_count or seen_new < new_count:
                if i >= len(lines):
                    raise PyuvBuildError(f"patch does not apply: hunk in {path} is cut short")
                body = lines[i]
                tag = body[:1] if body else " "  # some tools drop the space of empty context
                if tag not in " -+\\":
                    raise PyuvBuildError(f"patch does not apply: bad line in {path}: {body!r}")
                if tag != "\\":
                    hunk.lines.append(tag + body[1:])
                    seen_old += tag in " -"
                    seen_new += tag in " +"
                i += 1
            current.hunks.append(hunk)
        if not current.hunks:
            raise PyuvBuildError(f"patch does not apply: no hunks for {path}")
    if not files:
        raise PyuvBuildError("patch does not apply: no file changes found in the patch")
    return files


def _apply_hunks(path: str, original: str, hunks: list[_Hunk]) -> str:
    newline = "\r\n" if "\r\n" in original else "\n"
    source = _split_lines(original)
    result: list[str] = []
    pos = 0  # index into source of the next line not yet copied
    for number, hunk in enumerate(hunks, start=1):
        start = hunk.old_start - 1 if hunk.old_count else hunk.old_start
        if start < pos:
            raise PyuvBuildError(f"patch does not apply: hunks for {path} overlap")
        result.extend(source[pos:start])
        pos = start
        for body in hunk.lines:
            tag, text = body[0], body[1:]
            if tag in " -":
                if pos >= len(source) or source[pos] != text:
                    found = source[pos] if pos < len(source) else "end of file"
                    raise PyuvBuildError(
                        f"patch does not apply: {path} hunk {number} expects {text.strip()!r} "
                        f"at line {pos + 1}, found {found.strip()!r}"
                    )
                pos += 1
            if tag in " +":
                result.append(text)
    result.extend(source[pos:])
    trailing = newline if original.endswith("\n") else ""
    return newline.join(result) + trailing


def apply_patch(patch_text: str, root: Path) -> list[str]:
    """Apply a ``-p1`` unified diff to the tree at ``root`` exactly, or not at all.

    Every hunk must match at its stated line; nothing is written unless all do.
    Return the patched paths, relative to ``root``.
    """
    patched: dict[Path, str] = {}
    for file_patch in _parse_patch(patch_text):
        target = (root / file_patch.path).resolve()
        if not target.is_relative_to(root.resolve()):
            raise PyuvBuildError(f"patch does not apply: {file_patch.path} is outside the tree")
        if not target.is_file():
            raise PyuvBuildError(f"patch does not apply: {file_patch.path} does not exist")
        # surrogateescape carries any non-UTF-8 bytes through unchanged.
        with target.open(encoding="utf-8", errors="surrogateescape", newline="") as f:
            original = f.read()
        patched[target] = _apply_hunks(file_patch.path, original, file_patch.hunks)
    for target, text in patched.items():
        with target.open("w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(text)
    return [str(p.relative_to(root.resolve())) for p in patched]


# --------------------------------------------------------------------------- steps


def _download_sdist(target: _Target, cache: Path, quiet: bool) -> Path:
    cached = cache / "sdist" / SDIST_NAME
    if cached.is_file() and _sha256(cached) == SDIST_SHA256:
        _say(quiet, f"using cached {cached}")
        return cached
    _say(quiet, f"downloading {SDIST_NAME} from the package index")
    with tempfile.TemporaryDirectory(prefix="protoshim-dl-") as tmp:
        proc = _run(
            [
                target.python,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                tmp,
                f"pyuv=={PYUV_VERSION}",
            ],
            timeout=_PIP_TIMEOUT,
        )
        fetched = Path(tmp) / SDIST_NAME
        if proc.returncode != 0 or not fetched.is_file():
            raise PyuvBuildError(classify_download_failure(proc.stdout))
        digest = _sha256(fetched)
        if digest != SDIST_SHA256:
            raise PyuvBuildError(
                f"download failed: sha256 of {SDIST_NAME} is {digest}, expected {SDIST_SHA256}"
            )
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        shutil.copyfile(fetched, partial)
        os.replace(partial, cached)  # atomic, so a reader never sees half a file
    return cached


def _unpack(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist, "r:gz") as tar:
        data_filter = getattr(tarfile, "data_filter", None)
        if data_filter is not None:
            tar.extractall(dest, filter=data_filter)  # also drops the archive's owners
        else:  # Python 3.11.0-3.11.3 lack extraction filters
            root = dest.resolve()
            for member in tar.getmembers():
                if not (dest / member.name).resolve().is_relative_to(root) or not (
                    member.isfile() or member.isdir()
                ):
                    raise PyuvBuildError(f"unsafe member in {sdist.name}: {member.name}")
            tar.extractall(dest)  # members checked just above
    tree = dest / f"pyuv-{PYUV_VERSION}"
    if not (tree / "setup.py").is_file():
        raise PyuvBuildError(f"{sdist.name} does not contain pyuv-{PYUV_VERSION}/setup.py")
    return tree


def _wheel_dir(cache: Path, target: _Target) -> Path:
    # A different patch must not reuse wheels built from the old one.
    patch_key = hashlib.sha256(_patch_text().encode()).hexdigest()[:12]
    return cache / "wheels" / f"pyuv-{PYUV_VERSION}-{patch_key}" / target.abi_key


def _cached_wheel(wheel_dir: Path) -> Path | None:
    wheels = sorted(wheel_dir.glob(f"pyuv-{PYUV_VERSION}-*.whl")) if wheel_dir.is_dir() else []
    return wheels[0] if wheels else None


def _pep517_flag(target: _Target) -> list[str]:
    """Return ``["--use-pep517"]`` if the target's pip still has that option.

    pyuv has no pyproject.toml. pip before 23.1 (Debian 12's venvs have 23.0.1) then
    runs ``setup.py bdist_wheel`` in the target itself, which fails without the
    ``wheel`` package; the PEP 517 path fetches setuptools and wheel into an isolated
    build env instead. Newer pips always take that path and may drop the flag.
    """
    proc = _run([target.python, "-m", "pip", "wheel", "--help"], timeout=_CHECK_TIMEOUT)
    return ["--use-pep517"] if "--use-pep517" in proc.stdout else []


def _build_wheel(target: _Target, cache: Path, wheel_dir: Path, quiet: bool) -> Path:
    sdist = _download_sdist(target, cache, quiet)
    with tempfile.TemporaryDirectory(prefix="protoshim-pyuv-") as tmp:
        work = Path(tmp)
        _say(quiet, "unpacking and patching")
        tree = _unpack(sdist, work / "src")
        apply_patch(_patch_text(), tree)
        _say(quiet, f"building pyuv {PYUV_VERSION} (this takes about {BUILD_SECONDS_ESTIMATE} s)")
        started = time.monotonic()
        out = work / "wheel"
        # The target's own pip builds, so the wheel matches its ABI.
        proc = _run(
            [
                *(target.python, "-m", "pip", "wheel", "--no-deps", *_pep517_flag(target)),
                *("--wheel-dir", str(out), str(tree)),
            ],
            timeout=_PIP_TIMEOUT,
        )
        log = cache / "logs" / f"pyuv-build-{target.abi_key}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout, encoding="utf-8")
        built = sorted(out.glob(f"pyuv-{PYUV_VERSION}-*.whl")) if out.is_dir() else []
        if proc.returncode != 0 or not built:
            raise PyuvBuildError(f"{classify_build_failure(proc.stdout)} (full log: {log})")
        _say(quiet, f"built in {time.monotonic() - started:.0f} s")
        wheel_dir.mkdir(parents=True, exist_ok=True)
        final = wheel_dir / built[0].name
        partial = wheel_dir / (built[0].name + ".partial")
        shutil.copyfile(built[0], partial)
        os.replace(partial, final)
    return final


def _install_wheel(target: _Target, wheel: Path, quiet: bool) -> None:
    _say(quiet, f"installing {wheel.name} into {target.python}")
    proc = _run(
        [target.python, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)],
        timeout=_PIP_TIMEOUT,
    )
    if proc.returncode != 0:
        if "externally-managed-environment" in proc.stdout:
            raise PyuvBuildError(
                f"install failed: {target.python} is externally managed (PEP 668); "
                "pass the python of a virtualenv with --python"
            )
        line = _first_line_matching(proc.stdout, _ERROR_LINE) or _last_line(proc.stdout)
        raise PyuvBuildError(f"install failed: {line}")


# --------------------------------------------------------------------------- entry points


def install_pyuv(
    *, python: str = sys.executable, cache_dir: Path | None = None, quiet: bool = False
) -> str:
    """Make ``import pyuv`` work in the interpreter ``python``; return what was done.

    Does nothing if pyuv already imports and runs a loop there. Otherwise reuses a
    cached wheel for that interpreter's ABI, or downloads, verifies, patches and
    builds one first, then installs it with the interpreter's pip. ``cache_dir``
    defaults to :func:`default_cache_dir`. Progress goes to stderr unless ``quiet``.

    Raise :class:`PyuvBuildError` with a one-line reason on any failure.
    """
    if pyuv_works(python):
        return f"pyuv already works in {python}; nothing to do"
    target = _probe(python)
    _check_target(target)
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    wheel_dir = _wheel_dir(cache, target)
    wheel = _cached_wheel(wheel_dir)
    if wheel is not None:
        _say(quiet, f"reusing cached wheel {wheel}")
        how = "the cached wheel"
    else:
        _check_compiler(target)
        _check_headers(target)
        wheel = _build_wheel(target, cache, wheel_dir, quiet)
        how = "a freshly built wheel"
    _install_wheel(target, wheel, quiet)
    if not pyuv_works(python):
        raise PyuvBuildError(
            f"pyuv was installed from {wheel} but `{python} -c {_CHECK_SNIPPET!r}` still fails"
        )
    return f"installed pyuv {PYUV_VERSION} into {python} from {how} ({wheel})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the installer from the command line; return 0 on success, 2 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m protoshim._pyuv_build",
        description=f"Build pyuv {PYUV_VERSION} with protoshim's patch and install it.",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter to install pyuv into (default: this one)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache root (default: $PROTOSHIM_CACHE or ~/.cache/protoshim)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the result")
    args = parser.parse_args(argv)
    try:
        message = install_pyuv(python=args.python, cache_dir=args.cache_dir, quiet=args.quiet)
    except PyuvBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())

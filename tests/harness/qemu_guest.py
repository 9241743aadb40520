"""Run a command inside a throwaway QEMU guest booted from Debian's stock kernel.

The development kernel has no IPIP; Debian's generic kernel does, as a module.
This module owns everything needed to get there without installing anything
kernel-related on the host (see /work/shared/notes/ipip-in-qemu.md):

- ``ensure_kernel``: resolves the current ``linux-image-*-amd64`` version from
  ``apt-cache depends linux-image-amd64`` at run time, ``apt-get download`` +
  ``dpkg -x`` into a cache folder kept between runs (one version at a time);
- ``resolve_modules``: the modules to load, in dependency order, from each
  ``.ko``'s ``depends=`` (read from its ELF ``.modinfo`` section; no depmod);
- ``build_initramfs``: busybox-static, ``qemu/init.sh`` as ``/init`` and the
  modules, written as a newc cpio by Python (no external tool);
- ``run_in_guest``: boots it with TCG (never KVM: the host's paravirtual KVM
  cannot run a stock kernel), shares the host's ``/usr``, ``/etc``, the
  Python installation and the checkout read-only over 9p plus a writable
  results folder, runs the command chrooted there and returns its exit code
  (from a verdict line on the serial console) and output. QEMU runs under a
  deadline and is killed by PID whatever happens.

By hand: ``.venv/bin/python -m tests.harness.qemu_guest -- ip -br link``.
Kernels and initramfs images are cached in ``cache_dir()``
(``$MESHROUTE_QEMU_CACHE``, else /var/cache/meshroute-qemu when writable).
Python in the guest: the checkout is read-only, so run pytest there with
``-p no:cacheprovider``; importing pyroute2 under TCG takes several seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import lzma
import os
import re
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INIT_SCRIPT = Path(__file__).resolve().parent / "qemu" / "init.sh"
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")

# Loaded in the guest (plus what they depend on): the IPIP stack, veth for
# pods, bridge for the lab's rack segments, the nf_tables expressions the
# node's policy and NAT tables use, virtio + 9p for the shared folders,
# virtio-rng so that Python's getrandom() never waits for entropy under slow
# emulation.
DEFAULT_MODULES = (
    "tunnel4",
    "ip_tunnel",
    "ipip",
    "veth",
    "bridge",
    # libcrc32c (under nf_conntrack) needs a crc32c algorithm at load time:
    # a soft dependency, which depends= does not list
    "crc32c_generic",
    "nf_tables",
    "nft_ct",
    "nft_chain_nat",
    "nft_masq",
    "nft_log",
    "nf_log_syslog",
    "nft_reject_inet",
    "nft_fib_inet",
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "virtio_rng",
)

EXIT_RE = re.compile(r"MESHROUTE-QEMU-EXIT=(\d+)")
MARK_RE = re.compile(r"MESHROUTE-QEMU-MARK (\w+) ([\d.]+)")
BEGIN = "MESHROUTE-QEMU-BEGIN"
END = "MESHROUTE-QEMU-END"
POWEROFF_GRACE_S = 20.0


class QemuUnavailable(Exception):
    """QEMU cannot start at all on this machine (the only reason to skip)."""


@dataclass(frozen=True)
class Kernel:
    version: str  # e.g. 6.1.0-56-amd64
    vmlinuz: Path
    moddir: Path  # .../lib/modules/<version>


@dataclass(frozen=True)
class GuestResult:
    exit_code: int | None  # None: no verdict line (timeout, crash)
    output: str  # the command's output (between the BEGIN/END markers)
    console: str  # the whole serial console
    stderr: str  # QEMU's own stderr
    verdict_s: float | None  # host seconds from QEMU start to the verdict line
    total_s: float  # host seconds from QEMU start to QEMU gone
    timed_out: bool
    marks: dict[str, float] = field(default_factory=dict)  # guest uptime per stage

    def describe(self) -> str:
        return (
            f"exit={self.exit_code} verdict_s={self.verdict_s} total_s={self.total_s:.1f} "
            f"timed_out={self.timed_out} guest_marks={self.marks}\n"
            f"--- console ---\n{self.console[-8000:]}\n--- qemu stderr ---\n{self.stderr[-2000:]}"
        )


def cache_dir() -> Path:
    """Where kernels and initramfs images are kept between runs."""
    env = os.environ.get("MESHROUTE_QEMU_CACHE")
    if env:
        return Path(env)
    if os.access("/var/cache", os.W_OK):
        return Path("/var/cache/meshroute-qemu")
    return REPO / ".work" / "qemu-cache"


def probe_qemu() -> None:
    """Raise QemuUnavailable with the reason when QEMU cannot run a guest here."""
    if shutil.which(QEMU) is None:
        raise QemuUnavailable(f"{QEMU} not found (scripts/bootstrap installs qemu-system-x86)")
    if not BUSYBOX.exists():
        raise QemuUnavailable(f"{BUSYBOX} not found (scripts/bootstrap installs busybox-static)")
    for dev in ("/dev/null", "/dev/urandom"):
        if not os.path.exists(dev):
            raise QemuUnavailable(f"{dev} missing: QEMU cannot start here")
    try:
        p = subprocess.run(
            [QEMU, "-device", "help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuUnavailable(f"{QEMU} does not run: {e}") from e
    if p.returncode != 0:
        raise QemuUnavailable(f"{QEMU} -device help failed: {p.stderr.strip()[:300]}")
    if "virtio-9p-pci" not in p.stdout + p.stderr:
        raise QemuUnavailable(f"{QEMU} has no virtio-9p-pci: host folders cannot be shared")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise cache writers (several pytest processes may boot guests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def current_kernel_package() -> str:
    """The package linux-image-amd64 points at now (the mirror moves on)."""
    for attempt in range(2):
        p = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        m = re.search(r"Depends:\s+(linux-image-[\w.+-]+-amd64)\b", p.stdout)
        if m:
            return m.group(1)
        if attempt == 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], timeout=300, check=False)
    raise RuntimeError(f"cannot resolve linux-image-amd64: {p.stdout} {p.stderr}".strip())


def ensure_kernel(cache: Path | None = None) -> Kernel:
    """Debian's generic kernel and its modules, unpacked (not installed) in the cache."""
    cache = cache or cache_dir()
    pkg = current_kernel_package()
    version = pkg.removeprefix("linux-image-")
    root = cache / "kernels" / version
    with _locked(cache / "kernels.lock"):
        if not (root / ".complete").exists():
            _fetch_kernel(pkg, root)
            for other in (cache / "kernels").iterdir():
                if other.is_dir() and other != root:
                    shutil.rmtree(other, ignore_errors=True)
    return Kernel(
        version=version,
        vmlinuz=root / "boot" / f"vmlinuz-{version}",
        moddir=root / "lib" / "modules" / version,
    )


def _fetch_kernel(pkg: str, root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        subprocess.run(
            ["apt-get", "download", "-q", pkg],
            cwd=tmp,
            check=True,
            timeout=600,
            capture_output=True,
        )
        (deb,) = Path(tmp).glob("*.deb")
        staging = Path(tmp) / "root"
        subprocess.run(["dpkg", "-x", str(deb), str(staging)], check=True, timeout=600)
        # Only the kernel image and the module tree are used; the rest
        # (firmware lists, docs) is dropped to keep the cache small.
        (staging / ".complete").touch()
        keep = root.parent / (root.name + ".new")
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir()
        (staging / "boot").rename(keep / "boot")
        (keep / "lib").mkdir()
        (staging / "lib" / "modules").rename(keep / "lib" / "modules")
        (keep / ".complete").touch()
        keep.rename(root)


# --- modules -----------------------------------------------------------------


def _ko_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith((".zst", ".gz")):
        raise RuntimeError(f"unsupported module compression: {path}")
    return data


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The key=value strings of an ELF64 module's .modinfo section."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not an ELF64 object")
    e_shoff = struct.unpack_from("<Q", data, 0x28)[0]
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, e_shoff + i * e_shentsize
        )
        return name, offset, size

    _, stroff, _ = section(e_shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(e_shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name : end] != b".modinfo":
            continue
        for entry in data[offset : offset + size].split(b"\0"):
            if b"=" in entry:
                k, _, v = entry.decode(errors="replace").partition("=")
                info.setdefault(k, []).append(v)
    return info


def _module_name(filename: str) -> str:
    return filename.split(".ko")[0].replace("-", "_")


def resolve_modules(moddir: Path, wanted: Iterable[str]) -> list[Path]:
    """Module files to insmod, each after everything it depends on; modules
    built into the kernel are skipped."""
    index = {_module_name(p.name): p for p in moddir.rglob("*.ko*")}
    builtin = {
        _module_name(Path(line.strip()).name)
        for line in (moddir / "modules.builtin").read_text().splitlines()
        if line.strip()
    }
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise RuntimeError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in index:
            raise RuntimeError(f"module {name} not found under {moddir}")
        deps = modinfo(_ko_bytes(index[name])).get("depends", [""])[0]
        for dep in filter(None, deps.split(",")):
            visit(dep, (*chain, name))
        seen.add(name)
        order.append(index[name])

    for name in wanted:
        visit(name, ())
    return order


# --- initramfs -----------------------------------------------------------------


class _Cpio:
    """A newc ("070701") archive, which the kernel unpacks as the initramfs."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        namez = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(namez), 0)
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.ino += 1
        self.parts += [header, namez, b"\0" * (-(len(header) + len(namez)) % 4)]
        self.parts += [data, b"\0" * (-len(data) % 4)]

    def dir(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._add(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._add("TRAILER!!!", 0)
        return b"".join(self.parts)


def build_initramfs(kernel: Kernel, modules: Sequence[str], out_dir: Path) -> Path:
    """The initramfs for these modules, cached under a name derived from its inputs."""
    files = resolve_modules(kernel.moddir, modules)
    init = INIT_SCRIPT.read_bytes()
    busybox = BUSYBOX.read_bytes()
    h = hashlib.sha256(init + busybox + kernel.version.encode())
    for f in files:
        h.update(str(f.relative_to(kernel.moddir)).encode())
    path = out_dir / f"initramfs-{h.hexdigest()[:16]}.cpio"
    if path.exists():
        return path
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        c.dir(d)
    # Without /dev/console in the archive, init starts with no stdio.
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", busybox, 0o755)
    c.file("init", init, 0o755)
    names = []
    for f in files:
        name = _module_name(f.name)
        names.append(name)
        c.file(f"lib/modules/{name}.ko", _ko_bytes(f))
    c.file("modules.order", ("\n".join(names) + "\n").encode())
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(c.finish())
    tmp.rename(path)
    return path


# --- running -----------------------------------------------------------------


def default_shares() -> list[Path]:
    """The host's /usr and /etc, the running Python (its base installation and
    its venv) and the checkout, each mounted at the same path in the guest."""
    shares = [Path("/usr"), Path("/etc"), Path(sys.base_prefix).resolve()]
    shares += [Path(sys.prefix).resolve(), REPO]
    unique = list(dict.fromkeys(shares))
    # A folder inside another share is already there.
    return [s for s in unique if not any(o != s and s.is_relative_to(o) for o in unique)]


def _die_with_parent() -> None:
    # QEMU must not outlive the test process even if that one is killed -9.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_in_guest(
    command: str | Sequence[str],
    *,
    cwd: Path = REPO,
    timeout: float = 180.0,
    memory_mb: int = 1024,
    cpus: int = 2,
    modules: Sequence[str] = DEFAULT_MODULES,
    shares: Sequence[Path] | None = None,
    env: dict[str, str] | None = None,
) -> GuestResult:
    """Boot a guest, run ``command`` (a shell string or an argv) in ``cwd``
    chrooted on the shared host folders, and return what happened. Raises
    QemuUnavailable only when QEMU cannot be started at all."""
    probe_qemu()
    cache = cache_dir()
    kernel = ensure_kernel(cache)
    with _locked(cache / "initramfs.lock"):
        initrd = build_initramfs(kernel, modules, cache / "initramfs")
    shares = list(shares) if shares is not None else default_shares()
    for s in shares:
        if not s.is_dir() or re.search(r"[\s,:]", str(s)):
            raise ValueError(f"cannot share {s!r}")

    cmd = command if isinstance(command, str) else shlex.join(command)
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
    with tempfile.TemporaryDirectory(prefix="meshroute-qemu-") as results:
        Path(results, "command.sh").write_text(
            f"{exports}cd {shlex.quote(str(cwd))} || exit 126\n{cmd}\n"
        )
        append = ["console=ttyS0", "panic=-1", "quiet", "loglevel=3", "meshroute.results=res"]
        argv = [
            QEMU,
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            str(cpus),
            "-m",
            str(memory_mb),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-device",
            "virtio-rng-pci",
            "-kernel",
            str(kernel.vmlinuz),
            "-initrd",
            str(initrd),
        ]
        for i, s in enumerate(shares):
            argv += ["-virtfs", _virtfs(s, f"s{i}", readonly=True)]
            append.append(f"meshroute.share=s{i}:{s}")
        argv += ["-virtfs", _virtfs(Path(results), "res", readonly=False)]
        argv += ["-append", " ".join(append)]
        return _boot(argv, timeout)


def _virtfs(path: Path, tag: str, *, readonly: bool) -> str:
    ro = ",readonly=on" if readonly else ""
    return f"local,path={path},mount_tag={tag},security_model=none,multidevs=remap{ro}"


def _boot(argv: list[str], timeout: float) -> GuestResult:
    start = time.monotonic()
    lines: list[str] = []
    verdict: list[float] = []
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
    except OSError as e:
        raise QemuUnavailable(f"cannot start {QEMU}: {e}") from e
    stderr_chunks: list[bytes] = []
    timed_out = False
    assert proc.stdout is not None and proc.stderr is not None
    out_stream, err_stream = proc.stdout, proc.stderr

    def read_console() -> None:
        for raw in out_stream:
            line = raw.decode(errors="replace").rstrip("\r\n")
            lines.append(line)
            if not verdict and EXIT_RE.search(line):
                verdict.append(time.monotonic() - start)

    readers = [
        threading.Thread(target=read_console, daemon=True),
        threading.Thread(target=lambda: stderr_chunks.append(err_stream.read()), daemon=True),
    ]
    try:
        for t in readers:
            t.start()
        deadline = start + timeout
        while proc.poll() is None:
            now = time.monotonic()
            if verdict:
                # The guest has spoken; give the sysrq power-off a moment.
                deadline = min(deadline, start + verdict[0] + POWEROFF_GRACE_S)
            if now >= deadline:
                timed_out = not verdict
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for t in readers:
            if t.is_alive():
                t.join(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    total = time.monotonic() - start
    console = "\n".join(lines)
    m = EXIT_RE.search(console)
    output = ""
    if BEGIN in console:
        output = console.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
    return GuestResult(
        exit_code=int(m.group(1)) if m else None,
        output=output,
        console=console,
        stderr=b"".join(stderr_chunks).decode(errors="replace"),
        verdict_s=round(verdict[0], 2) if verdict else None,
        total_s=round(total, 2),
        timed_out=timed_out,
        marks={k: float(v) for k, v in MARK_RE.findall(console)},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.harness.qemu_guest [--timeout S] -- CMD...``: run CMD
    in a guest (from the checkout), print its output and timing, exit with its
    exit code (124 without a verdict)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.harness.qemu_guest")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--console", action="store_true", help="print the whole serial console")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    try:
        r = run_in_guest(args.command, timeout=args.timeout)
    except QemuUnavailable as e:
        print(f"QEMU cannot start: {e}", file=sys.stderr)
        return 125
    print(r.console if args.console else r.output)
    print(
        f"exit={r.exit_code} boot-to-verdict={r.verdict_s}s qemu-total={r.total_s}s "
        f"timed_out={r.timed_out} guest-uptime-marks={r.marks}",
        file=sys.stderr,
    )
    if r.exit_code is None and not args.console:
        print(r.describe(), file=sys.stderr)
    return r.exit_code if r.exit_code is not None else 124


if __name__ == "__main__":
    sys.exit(main())

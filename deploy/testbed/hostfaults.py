"""Two faults a host can have that a network namespace does not give for free: a full
disk under its Docker root and a step of its wall clock (the chaos suite's `disk_full`
and `clock_jump`, tests/chaos/faults.py).

- **A small disk.** With `Bed(small_disk=MiB)` every host's Docker data root is an ext4
  file system of its own on a loop device (a sparse file in the host's directory, no
  reserved blocks), so filling it fills that engine's disk and no other's. `down`
  unmounts it with the bed's other mounts; the loop device goes with the mount.
- **A clock of its own.** Network namespaces share the machine's one clock, so with
  `Bed(clock_shift=True)` each host's shoald runs with `clockshift.so` preloaded (built
  here from clockshift.c with the machine's gcc): its wall clock is the machine's plus
  the offset in the host's `clock-offset` file, its monotonic clocks stay real, as with
  a real clock step. Only shoald is shifted (not the host's dockerd or etcd member).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from deploy.testbed.teardown import BedError, run

HERE = Path(__file__).resolve().parent
FILL = "chaos-fill"  # the file that fills a host's Docker disk


def make_small_disk(image: Path, mount_point: Path, mib: int) -> None:
    """A `mib` MiB ext4 file system in the sparse file `image`, mounted at `mount_point`."""
    image.touch(mode=0o600)
    os.truncate(image, mib * 2**20)
    run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", str(image))
    mount_point.mkdir(mode=0o700, exist_ok=True)
    run("mount", "-o", "loop", str(image), str(mount_point))


def fill_disk(mount_point: Path) -> int:
    """Fill the file system at `mount_point` to its last block; the bytes taken. Most of
    it is allocated without writing (`fallocate`: the sparse image does not grow), the
    last blocks, which the file's own metadata makes hard to count, by writing."""
    st = os.statvfs(mount_point)
    bulk = max(0, st.f_bavail * st.f_frsize - 16 * 2**20)
    fd = os.open(mount_point / FILL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if bulk:
            os.posix_fallocate(fd, 0, bulk)
        taken = os.lseek(fd, bulk, os.SEEK_SET)
        for size in (2**20, 2**12):  # then MiB by MiB, then block by block, to ENOSPC
            chunk = b"\0" * size
            while True:
                try:
                    taken += os.write(fd, chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    return taken


def free_disk(mount_point: Path) -> None:
    (mount_point / FILL).unlink(missing_ok=True)


def build_clock_shim(out_dir: Path) -> Path:
    """clockshift.so built into `out_dir`; BedError when there is no gcc to build it."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BedError("clock_shift needs gcc to build deploy/testbed/clockshift.c (apt-get install gcc)")
    out = out_dir / "clockshift.so"
    run(gcc, "-shared", "-fPIC", "-O2", "-o", str(out), str(HERE / "clockshift.c"), "-ldl")
    return out


def set_clock(offset_file: Path, seconds: float) -> None:
    """The host's wall clock `seconds` from the machine's (0: in step); atomic."""
    tmp = offset_file.with_suffix(".tmp")
    tmp.write_text(f"{seconds:.3f}\n")
    tmp.replace(offset_file)


def clock_env(shim: Path, offset_file: Path) -> dict[str, str]:
    return {"LD_PRELOAD": str(shim), "SHOAL_CLOCK_OFFSET_FILE": str(offset_file)}

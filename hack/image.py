"""Build kvsched's container image without Docker or a registry: buildah, and a Python base made from Debian's
packages with mmdebstrap.

- `ensure_tools()`: buildah and mmdebstrap on PATH; as root on Debian, installs them with apt-get when missing (as
  tests/e2e/cluster/build.sh installs openssl); raises ToolsMissing otherwise.
- `base_tarball()`: `mmdebstrap --variant=minbase --include=<BASE_PACKAGES> bookworm`, cached as a tarball in the
  e2e cache (`image-base/`), keyed by suite, variant and include list: built once (~2 min), then reused.
- `Buildah`: one storage root under the e2e cache (overlay where the kernel allows it, vfs otherwise), so base,
  layers and images survive between test sessions; `import_base` commits the tarball as a local image (`buildah
  from scratch` + `buildah add` + `buildah commit`), `build` runs `buildah bud --isolation chroot --layers` on the
  Dockerfile with `--build-arg PYTHON_IMAGE=<that image>`, `run_argv` the command line of `buildah run`.
- `pip_build_settings()`: the host's pip index and CA bundle (a TLS-inspecting proxy's, as on CI machines), passed
  to the build stage as build arguments and a read-only mount; nothing of them is in the image.

`python -m hack.image build [--tag T]` (`make image`) builds the image into that storage and prints its tag and
size. Called by tests/image (the build, `kvsched plan` in the image, layer caching, `kvsched serve` from the image
against the e2e control plane).
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.harness.tools import cache_root

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"  # Debian 12: python3 is 3.11, the project's Python (pyproject's mypy python_version)
VARIANT = "minbase"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
TOOLS = {"buildah": "buildah", "mmdebstrap": "mmdebstrap"}  # command -> Debian package
DEFAULT_TAG = "localhost/kvsched:dev"
BUILD_CA_PATH = "/run/kvsched-build/pip-ca.crt"  # where the host's CA bundle is mounted during RUN steps


class ToolsMissing(RuntimeError):
    """buildah or mmdebstrap is not installed and cannot be installed here (not root, or no apt-get)."""


class BuildFailed(RuntimeError):
    """mmdebstrap or buildah exited non-zero; the message ends with the tail of its output."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def missing_tools() -> list[str]:
    """The Debian packages whose commands are not on PATH."""
    return [package for command, package in TOOLS.items() if shutil.which(command) is None]


def ensure_tools() -> None:
    """Install buildah and mmdebstrap with apt-get (no recommends) when missing; idempotent, a no-op when both are
    on PATH. Raises ToolsMissing when they are missing and this is not root on a machine with apt-get."""
    missing = missing_tools()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolsMissing(f"{', '.join(missing)} not installed, and apt-get cannot install them here "
                           f"(need root on Debian): apt-get install --no-install-recommends {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise ToolsMissing(f"`{' '.join(argv)}` failed:\n{_tail(done.stdout + done.stderr)}")
    if missing_tools():
        raise ToolsMissing(f"apt-get installed {', '.join(missing)} but {', '.join(missing_tools())} is not on PATH")


def image_cache() -> Path:
    """Everything this module keeps: base tarballs, buildah's storage, a lock."""
    return cache_root() / "image"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One builder at a time per cache (two test sessions must not both write the base tarball)."""
    image_cache().mkdir(parents=True, exist_ok=True)
    with (image_cache() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_key(suite: str = SUITE, variant: str = VARIANT, packages: Sequence[str] = BASE_PACKAGES) -> str:
    """The cache key of a base: suite, variant and the sorted include list, hashed (12 hex digits)."""
    spec = json.dumps([suite, variant, sorted(packages)])
    return f"{suite}-{variant}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def base_tarball(suite: str = SUITE, variant: str = VARIANT, packages: Sequence[str] = BASE_PACKAGES) -> Path:
    """The mmdebstrap tarball of the base, built into the cache when it is not there (a few minutes; written to a
    temporary name and renamed, so an interrupted build leaves nothing that looks complete)."""
    path = image_cache() / "base" / f"{base_key(suite, variant, packages)}.tar"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tar.partial")
    # --format=tar: mmdebstrap otherwise guesses the format from the name, and a name it does not know is a
    # directory it chroots into.
    argv = ["mmdebstrap", "--format=tar", f"--variant={variant}", f"--include={','.join(packages)}", suite,
            str(partial)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildFailed(f"`{' '.join(argv)}` failed:\n{_tail(done.stdout + done.stderr)}")
    partial.rename(path)
    return path


@dataclass(frozen=True)
class PipSettings:
    """What the build stage's pip needs from the host: build arguments and read-only mounts (host:container)."""

    build_args: tuple[tuple[str, str], ...] = ()
    volumes: tuple[str, ...] = ()


def pip_build_settings(environ: dict[str, str] | None = None, pip_conf: Path = Path("/etc/pip.conf")
                       ) -> PipSettings:
    """The host's pip index (PIP_INDEX_URL) and CA bundle (PIP_CERT, or `cert` in pip.conf's [global]) for the
    Dockerfile's build stage: the index as a build argument, the bundle mounted at BUILD_CA_PATH with PIP_CERT
    pointing there. Empty when the host's pip uses its defaults."""
    env = os.environ if environ is None else environ
    conf = configparser.ConfigParser()
    if pip_conf.exists():
        conf.read(pip_conf)
    args: list[tuple[str, str]] = []
    volumes: list[str] = []
    if env.get("PIP_INDEX_URL"):
        args.append(("PIP_INDEX_URL", env["PIP_INDEX_URL"]))
    cert = env.get("PIP_CERT") or conf.get("global", "cert", fallback="")
    if cert and Path(cert).is_file():
        args.append(("PIP_CERT", BUILD_CA_PATH))
        volumes.append(f"{Path(cert).resolve()}:{BUILD_CA_PATH}:ro")
    return PipSettings(tuple(args), tuple(volumes))


@dataclass(frozen=True)
class Step:
    """One instruction of a `buildah bud` run, whether buildah took its layer from the cache, and the (short) id of
    the image it left ("" when buildah printed none)."""

    instruction: str
    cached: bool
    layer: str = ""


_STEP = re.compile(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: (.*)$")
_LAYER = re.compile(r"^--> ([0-9a-f]{6,64})$")


def parse_steps(output: str) -> list[Step]:
    """The steps of `buildah bud --layers` output in order: a step is cached when "--> Using cache <id>" follows
    it before the next step; "--> <id>" gives its layer."""
    steps: list[Step] = []
    for line in output.splitlines():
        line = line.strip()
        match = _STEP.match(line)
        if match:
            steps.append(Step(match.group(1).strip(), False))
        elif steps and line.startswith("--> Using cache"):
            steps[-1] = dataclasses.replace(steps[-1], cached=True)
        elif steps and (layer := _LAYER.match(line)):
            steps[-1] = dataclasses.replace(steps[-1], layer=layer.group(1))
    return steps


_SIZE = re.compile(r"^([\d.]+)\s*([kKMGT]?B)$")
_UNITS = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}


def parse_size(text: str) -> int:
    """Bytes from buildah's human size ("606 MB": decimal units, 3 significant digits, so +-0.5 MB here)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"not a buildah image size: {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class Build:
    """A finished `buildah bud`: the image's tag and id, the base it was built on, its output and how long it
    took (wall seconds)."""

    tag: str
    image_id: str
    base_image: str
    output: str
    seconds: float

    @property
    def steps(self) -> list[Step]:
        return parse_steps(self.output)


def storage_driver(root: Path) -> str:
    """overlay when buildah can use it in `root`'s parent directory here, vfs otherwise (vfs copies every layer:
    slower and larger, but works in any sandbox). KVSCHED_BUILDAH_DRIVER forces one."""
    forced = os.environ.get("KVSCHED_BUILDAH_DRIVER")
    if forced:
        return forced
    probe = root / "buildah-overlay"
    done = subprocess.run(["buildah", "--root", str(probe), "--runroot", str(root / "run-overlay"),
                           "--storage-driver", "overlay", "info"], capture_output=True, text=True)
    return "overlay" if done.returncode == 0 else "vfs"


@dataclass(frozen=True)
class Buildah:
    """buildah with this project's storage (root under the e2e cache, one per driver)."""

    root: Path
    runroot: Path
    driver: str

    @classmethod
    def from_cache(cls) -> Buildah:
        base = image_cache()
        base.mkdir(parents=True, exist_ok=True)
        driver = storage_driver(base)
        return cls(base / f"buildah-{driver}", base / f"run-{driver}", driver)

    def argv(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.root), "--runroot", str(self.runroot),
                "--storage-driver", self.driver, *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`buildah <args>` (stderr folded into stdout); raises BuildFailed on a non-zero exit when `check`."""
        done = subprocess.run(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if check and done.returncode != 0:
            raise BuildFailed(f"`buildah {' '.join(args)}` exited {done.returncode}:\n{_tail(done.stdout)}")
        return done

    def has_image(self, name: str) -> bool:
        return self.run("inspect", "--type", "image", name, check=False).returncode == 0

    def import_base(self, tarball: Path) -> str:
        """The tarball as local image `localhost/kvsched-python-base:<its key>` (committed once, then reused)."""
        name = f"localhost/kvsched-python-base:{tarball.stem}"
        if self.has_image(name):
            return name
        container = self.run("from", "scratch").stdout.strip().splitlines()[-1]
        try:
            self.run("add", container, str(tarball), "/")
            self.run("config", "--cmd", "python3", container)
            self.run("commit", container, name)
        finally:
            self.run("rm", container, check=False)
        return name

    def build(self, context: Path, base_image: str, tag: str, *, target: str | None = None,
              pip: PipSettings | None = None) -> Build:
        """`buildah bud --isolation chroot --layers` of `context`/Dockerfile on `base_image`; raises BuildFailed
        with the tail of the output."""
        pip = pip_build_settings() if pip is None else pip
        iidfile = self.runroot / f"iid-{os.getpid()}-{time.monotonic_ns()}"
        self.runroot.mkdir(parents=True, exist_ok=True)
        args = ["bud", "--isolation", "chroot", "--layers", "--pull=never", "--iidfile", str(iidfile),
                "--build-arg", f"PYTHON_IMAGE={base_image}", "-t", tag]
        for key, value in pip.build_args:
            args += ["--build-arg", f"{key}={value}"]
        for volume in pip.volumes:
            args += ["--volume", volume]
        if target:
            args += ["--target", target]
        start = time.monotonic()
        done = self.run(*args, str(context))
        seconds = time.monotonic() - start
        image_id = iidfile.read_text().strip().removeprefix("sha256:")
        iidfile.unlink()
        return Build(tag, image_id, base_image, done.stdout, seconds)

    def size_bytes(self, image: str) -> int:
        """The image's size as `buildah images` reports it (decimal, 3 significant digits)."""
        [entry] = json.loads(self.run("images", "--json", image).stdout)
        return parse_size(entry["size"])

    def remove_images(self, *images: str) -> None:
        """Remove images (by id or name), ignoring those already gone or still used by another image."""
        for image in images:
            self.run("rmi", image, check=False)

    def run_argv(self, container: str, command: Sequence[str], *, volumes: Sequence[str] = (),
                 env: dict[str, str] | None = None, network_host: bool = False, user: str | None = None
                 ) -> list[str]:
        """The command line of `buildah run` for `command` in working container `container` (chroot isolation)."""
        args = ["run", "--isolation", "chroot"]
        if network_host:
            args += ["--network", "host"]
        if user:
            args += ["--user", user]
        for volume in volumes:
            args += ["--volume", volume]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        return self.argv(*args, container, "--", *command)

    @contextlib.contextmanager
    def container(self, image: str) -> Iterator[str]:
        """A working container of `image` (`buildah from`), removed afterwards."""
        name = self.run("from", "--pull=never", image).stdout.strip().splitlines()[-1]
        try:
            yield name
        finally:
            self.run("rm", name, check=False)


def build_image(tag: str = DEFAULT_TAG, context: Path = REPO_ROOT) -> tuple[Buildah, Build]:
    """Tools, base tarball, base image, then the Dockerfile: everything cached is reused, so a warm call costs
    seconds. Raises ToolsMissing or BuildFailed."""
    ensure_tools()
    with _locked():
        buildah = Buildah.from_cache()
        base = buildah.import_base(base_tarball())
        return buildah, buildah.build(context, base, tag)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hack.image", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the image into the cache's buildah storage")
    build.add_argument("--tag", default=DEFAULT_TAG)
    args = parser.parse_args(argv)
    try:
        buildah, done = build_image(args.tag)
    except (ToolsMissing, BuildFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = buildah.size_bytes(done.tag)
    print(f"built {done.tag} ({done.image_id[:12]}) in {done.seconds:.0f}s, {size / 1e6:.0f} MB")
    print(f"buildah: {' '.join(buildah.argv())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

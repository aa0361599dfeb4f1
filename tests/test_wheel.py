"""The wheel holds every module and data file of the source tree: built, installed into a fresh virtual
environment, and every module imported from there (not from the checkout), so a subpackage the packaging
misses fails here, not in the Docker image that installs the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_files() -> list[Path]:
    """Every file under smartpark/, its links into the service folders followed, relative to the root."""
    out = []
    for folder, dirs, files in os.walk(ROOT / "smartpark", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out += [(Path(folder) / f).relative_to(ROOT) for f in files]
    return sorted(out)


def source_modules() -> list[str]:
    """Every module of the source tree, as dotted names."""
    out = []
    for path in source_files():
        # __main__ would run the command line; Alembic's env and revisions run only inside a migration
        script = path.stem == "__main__" or (path.parent.name == "migrations" and path.stem == "env") \
            or path.parent.name == "versions"
        if path.suffix == ".py" and not script:
            parts = path.with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def source_data() -> list[str]:
    """Every file of the source tree but compiled ones (modules, YAML, templates, migration scripts, ...)."""
    return [str(p) for p in source_files() if p.suffix != ".pyc"]


def test_the_wheel_installs_every_module_of_the_source_tree(tmp_path: Path) -> None:
    # built from a copy: setuptools reuses a build/ folder in the source tree, which would hide a missing module
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "smartpark-data"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("smartpark-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies come from this interpreter's environment; smartpark itself only from the wheel
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
                   check=True, capture_output=True)
    modules = source_modules()
    assert len(modules) > 60
    missing = [f for f in source_data() if not (Path(site) / f).is_file()]
    assert missing == [], "files left out of the wheel (package-data in pyproject.toml)"
    script = ("import importlib\n"
              f"for name in {modules!r}:\n"
              "    m = importlib.import_module(name)\n"
              f"    assert m.__file__.startswith({site!r}), (name, m.__file__)\n")
    done = subprocess.run([python, "-I", "-c", script], check=False, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

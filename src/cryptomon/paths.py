"""Where the project's files are: the checkout (when installed editable) and the installed jars."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = PACKAGE_DIR / "db" / "migrations"
TOPICS_FILE = PACKAGE_DIR / "kafka" / "topics.conf"


def project_root() -> Path | None:
    """The checkout holding this package, when it is one (an editable install)."""
    root = PACKAGE_DIR.parent.parent
    return root if (root / "scripts" / "setup.sh").is_file() else None


def default_deps_dir() -> Path:
    root = project_root()
    return root / ".deps" if root else Path.home() / ".cache" / "cryptomon" / "deps"

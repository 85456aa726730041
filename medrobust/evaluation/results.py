"""The result of a command that writes a run folder: where its outputs are, by role (read by pipelines)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass
class RunResult:
    """A run folder and its outputs. Subclasses name their files in ``FILES`` (role -> file name).

    Args:
        run_dir: the run folder.
    """

    run_dir: Path
    FILES: ClassVar[dict[str, str]] = {}

    @classmethod
    def paths(cls, run_dir: Path) -> dict[str, str]:
        """The outputs a run in ``run_dir`` writes (the one place pipelines read them from).

        Args:
            run_dir: the run folder (need not exist yet).

        Returns:
            ``{"run_dir": ..., role: path}`` for every role in ``FILES``.
        """
        run_dir = Path(run_dir)
        return {"run_dir": str(run_dir), **{role: str(run_dir / name) for role, name in cls.FILES.items()}}

    def outputs(self) -> dict[str, str]:
        """:meth:`paths` of this run's folder."""
        return self.paths(self.run_dir)

"""Library functions log through per-module loggers and leave console handlers to the CLI."""

import logging

import pytest

from medrobust.config import TrainConfig, load_config
from medrobust.utils import attach_run_log, setup_logging

from conftest import bare_logger, tiny_train_config


def _console(lg):
    return [h for h in lg.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


@pytest.mark.slow
def test_train_adds_only_its_run_file_and_module_loggers_reach_it(tmp_path):
    from medrobust.training.engine import train

    with bare_logger() as lg:
        res = train(load_config(TrainConfig, data=tiny_train_config(tmp_path, epochs=1)))
        assert _console(lg) == []  # no console handler installed by the library
        text = (res.run_dir / "log.txt").read_text()
        assert "finished:" in text  # medrobust.training.engine
        assert "training samples" in text  # medrobust.data.datasets, another module's logger
        attach_run_log(tmp_path / "other")  # a second run moves the file, one file at a time
        files = [h for h in lg.handlers if isinstance(h, logging.FileHandler)]
        assert len(files) == 1 and files[0].baseFilename.endswith("other/log.txt")
        setup_logging(None)  # what the CLI does
        assert len(_console(lg)) == 1 and lg.propagate is False


def test_attach_run_log_adds_a_file_not_a_console(tmp_path):
    with bare_logger() as lg:
        attach_run_log(tmp_path / "run")
        logging.getLogger("medrobust.some.module").info("hello from a module")
        assert _console(lg) == [] and lg.level == logging.INFO
        for h in lg.handlers:
            h.flush()
        assert "INFO hello from a module" in (tmp_path / "run" / "log.txt").read_text()
"""Training: ``train(TrainConfig(...)) -> summary`` for char-LM, text/image classification, adding and copy.

>>> from normrnn.train import TrainConfig, train, LossRecorder
>>> rec = LossRecorder()
>>> summary = train(TrainConfig(task="adding", seq_len=30, hidden=64, max_steps=200, progress=False), hooks=[rec])
>>> summary["valid_mse"], rec.losses[:3]

The application built on the library: ``models.py`` (the models: char-LM, sequence classifier, CNN+RNN, all
configured by one ``RNNConfig``), ``config.py`` (the run configuration), ``tasks.py`` (data, model and loss per
task), ``trainer.py`` (the loop), ``batches.py``, ``checkpoint.py`` (exact resume), ``runlog.py``, ``metrics.py``,
``distributed.py`` (DDP) and ``cli.py`` (``normrnn train``).
"""
from .batches import BatchPlan, minibatches, shard, stream_plan
from .checkpoint import atomic_save, load_checkpoint
from .config import DEFAULT_DATA, TASKS, TrainConfig, check_resume_compatible
from .runlog import Hook, LossRecorder
from .tasks import Task, make_task
from .trainer import Trainer, load_run_config, train

__all__ = ["TrainConfig", "Trainer", "train", "load_run_config", "LossRecorder", "Hook", "Task", "make_task",
           "BatchPlan", "stream_plan", "minibatches", "shard", "atomic_save", "load_checkpoint", "TASKS",
           "DEFAULT_DATA", "check_resume_compatible"]

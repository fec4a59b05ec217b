"""Training: the loop (fit, train_step, checkpoints, resume, Ctrl-C), evaluation, plots, the
MNIST recipes and fine-tuning helpers. Uses the engine and both wings (data/, io/)."""
from .evaluate import confusion_matrix, logits_of, predict, predict_probs, report, softmax
from .loop import TrainOptions, fit, make_optimizer, rng_state, set_rng_state, train_step

__all__ = ["TrainOptions", "fit", "train_step", "make_optimizer", "rng_state", "set_rng_state",
           "logits_of", "predict", "predict_probs", "softmax", "confusion_matrix", "report"]

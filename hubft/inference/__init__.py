"""After training: evaluate a trained model, run it on images, and export it (``hubft eval``, ``predict``,
``export``).

- :func:`load_inference_model` loads any model hubft can name (a Hub repo, a directory, a run) with its own eval
  preprocessing and the task it was fine-tuned for.
- :func:`evaluate_model` measures the task's metrics on one split of a dataset; :func:`push_eval_results` adds them
  to the repo's model card.
- :func:`predict` gives the top labels of image files, folders, globs or a dataset split;
  :func:`write_predictions` writes them as JSON lines or CSV.
- :func:`predict_masks` gives a segmentation model's class-id masks at each image's own size.
- :func:`export_onnx` writes an ONNX file checked against torch.
- Test-time augmentation (``tta``: ``hflip``, ``multiscale``) averages the logits over the views.
"""

from hubft.inference._model import InferenceModel, load_inference_model
from hubft.inference._tta import TTA_MODES, parse_tta
from hubft.inference.evaluate import EvalReport, evaluate_model, push_eval_results
from hubft.inference.export import ONNX_TOLERANCE, ExportReport, export_onnx
from hubft.inference.masks import predict_masks
from hubft.inference.predict import predict, write_predictions

__all__ = [
    "EvalReport",
    "ExportReport",
    "InferenceModel",
    "ONNX_TOLERANCE",
    "TTA_MODES",
    "evaluate_model",
    "export_onnx",
    "load_inference_model",
    "parse_tta",
    "predict",
    "predict_masks",
    "push_eval_results",
    "write_predictions",
]

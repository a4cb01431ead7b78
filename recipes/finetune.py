# Fine-tune a pretrained backbone for a task (model.task: image classification by default) and leave a finished
# model directory.
#
#   accelerate launch recipes/finetune.py --config recipes/configs/digits.yaml [--section.field VALUE ...]
#   torchrun --nproc_per_node 2 recipes/finetune.py --config ... --train.cpu true
#
# The same run is `hubft finetune --config ...` or `hubft.finetune(config)` in Python. This script only strings
# hubft's stages together, in the order they happen, so it can be read top to bottom and copied as a template.
import sys

import hubft

# Config first: YAML + --section.field overrides, type-checked, so a typo fails now and not after an hour.
try:
    config = hubft.parse_finetune_args(sys.argv[1:])
    ft = hubft.Finetuner(config)  # also sets up Accelerate: devices, processes, precision, accumulation
except hubft.HubftError as e:
    print(f"hubft: error: {e}", file=sys.stderr)  # one line: the cause and the fix
    sys.exit(e.exit_code)

try:
    # Data: the dataset, its label names, a stratified eval split if it has none, and the task as these labels
    # need it (one class per image, or several).
    ft.setup_data()
    # Model: the backbone with its classifier stripped and the task's fresh head for these labels (frozen body if
    # asked).
    ft.setup_model()
    # Every other part, built from those two into one frozen record (ft.parts): loaders, loss, parameter groups
    # (head vs body LRs), optimizer, schedule, EMA; then resume, if asked.
    ft.setup_training()
    # The loop: epochs of accumulated updates, evaluation each epoch, atomic checkpoints.
    ft.fit()
    if ft.preempted:
        sys.exit(hubft.PREEMPTED_EXIT_CODE)  # SIGTERM: a checkpoint was written; resume with --train.resume latest
    # Outputs: timm-loadable weights, config, metrics, plots and model card; then the Hub, if asked.
    ft.save()
    ft.push()
except hubft.HubftError as e:
    print(f"hubft: error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
finally:
    ft.close()  # every process waits and leaves the process group, so a multi-process run exits 0

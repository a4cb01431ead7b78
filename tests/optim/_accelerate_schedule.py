# A plain Accelerate loop with a hubft schedule passed to accelerator.prepare, run under torchrun by
# test_schedule_step.py: each process writes the LR it used at every update to <out>-<rank>.json.
import gc
import json
import sys

import torch
from accelerate import Accelerator

import hubft

accelerator = Accelerator(cpu=True)
model = torch.nn.Linear(3, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
schedule = hubft.create_scheduler(optimizer, "cosine", warmup_steps=2, total_updates=8)
model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)

lrs = []
for update in range(8):
    accelerator.backward(model(torch.ones(4, 3)).sum())
    optimizer.step()
    schedule.step()  # Accelerate's wrapper calls the schedule's step() once per process
    optimizer.zero_grad()
    lrs.append(schedule.get_last_lr()[0])

out = sys.argv[1]
with open(f"{out}-{accelerator.process_index}.json", "w") as f:
    json.dump({"processes": accelerator.num_processes, "lrs": lrs}, f)

# Free the DDP wrapper before leaving the process group: torn down at interpreter exit, its threads can abort.
del model, optimizer, schedule
gc.collect()
accelerator.wait_for_everyone()
accelerator.end_training()

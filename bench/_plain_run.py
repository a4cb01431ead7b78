"""The plain side of ratio 9: a fine-tuning script written the obvious way, run as a process of its own.

    python bench/_plain_run.py DATA_ROOT OUT_DIR MODEL IMAGE_SIZE BATCH EPOCHS

timm model, torchvision ``ImageFolder`` + ``DataLoader`` over the PNG folder (decoding every image every epoch, with
timm's train and eval transforms), AdamW with hubft's defaults (lr 1e-3, weight decay 0.05) and a per-update cosine
schedule, the accuracy on the test split after every epoch, the weights saved with ``torch.save`` at the end. No
worker processes: hubft's own default on CPU (decoding would compete with training for the same cores), and the
peak RSS measured for one process then covers the whole job. It prints ``first_update <unix time>`` after the first
optimizer step, so the parent can report launch-to-first-update as it does for hubft.
"""

import sys
import time

import timm
import torch
from timm.data import create_transform
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder


def main(root: str, out: str, model_name: str, size: int, batch: int, epochs: int) -> None:
    torch.manual_seed(0)
    train = ImageFolder(f"{root}/train", create_transform(input_size=(3, size, size), is_training=True))
    test = ImageFolder(f"{root}/test", create_transform(input_size=(3, size, size)))
    train_loader = DataLoader(train, batch_size=batch, shuffle=True, drop_last=True)
    test_loader = DataLoader(test, batch_size=batch)
    model = timm.create_model(model_name, pretrained=False, num_classes=len(train.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train_loader))
    first = True
    for epoch in range(epochs):
        model.train()
        for x, y in train_loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if first:
                print(f"first_update {time.time()}", flush=True)
                first = False
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        print(f"epoch {epoch} loss {loss.item():.4f} accuracy {correct / total:.3f}", flush=True)
    torch.save(model.state_dict(), f"{out}/model.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7]))

"""The tiny MTRefSeg-R1 learns the direction of a change from words; CVA cannot.

Every generated pair holds one building (a flat bright square) that appears and one that
disappears. "new building" refers only to the first, "demolished building" only to the second. CVA
flags both, so its IoU for either query is at most about one half; a model that reads the query and
the sign of the change gets both right.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtrs_geo.baselines.cva import ChangeVectorAnalysis
from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

SIZE = 48
QUERIES = ("new building", "demolished building")
STEPS = 200
PAIRS_PER_STEP = 4


def _square(gen: torch.Generator, left_half: bool) -> tuple[int, int, int]:
    side = int(torch.randint(8, 15, (1,), generator=gen))
    half = SIZE // 2
    low, high = (0, half - side) if left_half else (half, SIZE - side)
    x = int(torch.randint(low, high + 1, (1,), generator=gen))
    y = int(torch.randint(0, SIZE - side + 1, (1,), generator=gen))
    return y, x, side


def generated_pairs(
    count: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(before, after, appeared, disappeared)``: images ``(N, 3, S, S)``, masks ``(N, S, S)``."""
    coarse = torch.rand(count, 3, 6, 6, generator=gen)
    ground = F.interpolate(coarse, (SIZE, SIZE), mode="bilinear", align_corners=False) * 0.5 + 0.2
    before = ground + 0.02 * torch.randn(count, 3, SIZE, SIZE, generator=gen)
    after = ground + 0.02 * torch.randn(count, 3, SIZE, SIZE, generator=gen)
    appeared = torch.zeros(count, SIZE, SIZE)
    disappeared = torch.zeros(count, SIZE, SIZE)
    for i in range(count):
        new_left = bool(torch.rand(1, generator=gen) < 0.5)
        for image, mask, left in ((after, appeared, new_left), (before, disappeared, not new_left)):
            y, x, side = _square(gen, left)
            roof = torch.rand(3, generator=gen) * 0.3 + 0.7
            image[i, :, y : y + side, x : x + side] = roof[:, None, None]
            mask[i, y : y + side, x : x + side] = 1.0
    return before.clamp(0, 1), after.clamp(0, 1), appeared, disappeared


def iou(probs: torch.Tensor, labels: torch.Tensor) -> float:
    predicted, truth = probs >= 0.5, labels >= 0.5
    return float((predicted & truth).sum() / (predicted | truth).sum().clamp(min=1))


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_tiny_model_learns_appeared_versus_disappeared_and_beats_cva() -> None:
    torch.manual_seed(0)
    model = MTRefSegR1(MTRefSegR1Config.from_size("tiny"))
    embeds = model.encode_text(list(QUERIES))
    rows = torch.tensor([0] * PAIRS_PER_STEP + [1] * PAIRS_PER_STEP)
    batch_embeds = embeds.select(rows)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=4e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 4e-3, total_steps=STEPS, pct_start=0.1
    )
    gen = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    model.train()
    for _ in range(STEPS):
        before, after, appeared, disappeared = generated_pairs(PAIRS_PER_STEP, gen)
        output = model(
            before.repeat(2, 1, 1, 1),
            after.repeat(2, 1, 1, 1),
            text_embeds=batch_embeds,
            labels=torch.cat([appeared, disappeared]),
        )
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        schedule.step()
    train_seconds = time.perf_counter() - start

    held_out = torch.Generator().manual_seed(12345)
    before, after, appeared, disappeared = generated_pairs(24, held_out)
    model.eval()
    cva = ChangeVectorAnalysis()
    cva.calibrate(before.numpy(), after.numpy(), np.ones(appeared.shape, dtype=bool))
    cva_probs = torch.from_numpy(cva.predict(before.numpy(), after.numpy()))
    with torch.no_grad():
        for row, labels in ((0, appeared), (1, disappeared)):
            probs = model(before, after, text_embeds=embeds.select([row] * 24)).probabilities()
            model_iou, cva_iou = iou(probs, labels), iou(cva_probs, labels)
            print(f"{QUERIES[row]!r}: model IoU {model_iou:.3f}, cva IoU {cva_iou:.3f}")
            assert model_iou > cva_iou + 0.2, (QUERIES[row], model_iou, cva_iou)
            assert model_iou > 0.7
    print(f"{STEPS} steps in {train_seconds:.1f} s")

"""The live probe's settings (``probe.json``): the scenario's sections the training process needs.

The runner writes the file from the scenario's typed sections, the probe reads it back into the
same types, so every default is stated once, in :mod:`harness.records.scenario`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from harness.layout import PROBE_CONFIG_FILE
from harness.records.scenario import CudaConfig, MemrayConfig, Scenario, TensorsConfig


class ProbeConfig(BaseModel):
    """What one stage's probe does; docs/run-directory.md describes the file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    stage: str
    device: str
    memray: MemrayConfig
    tensors: TensorsConfig
    cuda: CudaConfig

    @classmethod
    def for_stage(cls, scenario: Scenario, stage: str) -> ProbeConfig:
        return cls(stage=stage, device=scenario.device, memray=scenario.memray,
                   tensors=scenario.tensors, cuda=scenario.cuda)

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @classmethod
    def read(cls, stage_dir: Path) -> ProbeConfig:
        """The settings the runner wrote into ``stage_dir``."""
        return cls.model_validate_json((stage_dir / PROBE_CONFIG_FILE).read_text(encoding="utf-8"))

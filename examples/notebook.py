# %% [markdown]
# # tiny-chat from Python
#
# The first two stages of `examples/tiny-chat.yaml` (pretrain -> sft), built with the typed models,
# run in local mode through `refinery.Client`, watched with a progress bar, and their metrics read
# back as tables. A cut-down copy of the example: the same tiny model, data and learning rates,
# with fewer steps (pretrain 100 instead of 150, sft 50 instead of 500) so that it runs in well
# under a minute on a laptop CPU (the losses still fall: the metrics tables show it). Open it in Jupyter or VS Code (cells are `# %%`), or run it:
#
#     python examples/notebook.py            # the run goes to ./runs/tiny-chat-notebook
#
# Against a cluster, the same calls work on `Client()` (kubeconfig) or `Client(context=...)`:
# copy examples/data to the volume first (examples/tiny-chat.yaml says how).

# %%
import os
from pathlib import Path

import pandas as pd

from refinery import Client, TrainingPipeline
from refinery.api import ClaimTemplate, DataSpec, ModelConfig, ModelSource, PipelineSpec, Stage, Storage, TrainingSpec

EXAMPLES = Path(__file__).resolve().parent if "__file__" in globals() else Path("examples").resolve()
WORKDIR = os.environ.get("REFINERY_WORKDIR", "runs")
NAME = "tiny-chat-notebook"

# %% Build the pipeline in Python and check it as the API server would (`refinery validate`)
pipeline = TrainingPipeline(
    metadata={"name": NAME},
    spec=PipelineSpec(
        image="ghcr.io/refinery-dev/refinery-trainer:0.1.0",
        storage=Storage(claim=ClaimTemplate(size="1Gi")),
        stages=[
            Stage(name="pretrain", type="pretrain",
                  model=ModelSource(config=ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=256, max_position_embeddings=128),
                                    vocab_size=512),
                  data=DataSpec(path="data/pretrain.txt"),
                  training=TrainingSpec(max_steps=100, learning_rate=3e-3, batch_size=16, seq_len=128, save_steps=100,
                                        logging_steps=10)),
            Stage(name="sft", type="sft", from_="pretrain",
                  data=DataSpec(path="data/sft.jsonl", eval_path="data/sft_eval.jsonl"),
                  training=TrainingSpec(max_steps=50, learning_rate=3e-3, batch_size=8, seq_len=64, save_steps=50,
                                        logging_steps=10)),
        ],
    ),
)
pipeline.check()  # raises InvalidManifest, listing every problem with its field
print(pipeline.to_yaml())

# %% Run it locally: `apply` starts `refinery run` in the background and returns at once
client = Client.local(workdir=WORKDIR, data_root=EXAMPLES)
client.apply(pipeline)
finished = client.wait(NAME, until="Succeeded", timeout=600)  # a progress bar; progress=False for none
print(f"pipeline {NAME}: {finished.status.phase}")

# %% Stages
print(pd.DataFrame([{"stage": s.name, "phase": s.phase, "steps": s.step, "checkpoints": s.checkpoints,
                     **s.metrics} for s in client.stages(NAME)]).to_string(index=False))

# %% Metrics: every row the trainer logged (metrics.jsonl), as a DataFrame
for stage in ("pretrain", "sft"):
    metrics = pd.DataFrame(client.metrics(NAME, stage))
    columns = [c for c in ("step", "loss", "eval_loss", "learning_rate") if c in metrics]
    print(f"\n{stage} metrics")
    print(metrics[columns].to_string(index=False))

# %% The log of a stage, and the pipeline's events
print("\n".join(list(client.logs(NAME, "sft"))[-3:]))
for event in client.events(NAME):
    print(event.reason, event.message)

"""The paper's RLHF values (§4.3), defined once.

They are the defaults of `qrm sft`, `qrm rloo` and `qrm grpo` (`qrm_hf.cli_rlhf`) and of
`PaperSFTConfig`, `paper_lora_config` (`training/sft.py`) and `PaperRLOOConfig` / `PaperGRPOConfig`
(`training/rlhf_pipeline.py`). Nothing is imported here, so that the `qrm` parser reads them without TRL.
"""

DATA = "Anthropic/hh-rlhf"  # the prompts and chosen responses
BATCH_SIZE = 1024  # examples per optimizer step, SFT and RLOO alike
# LoRA rank 32, alpha 64, on every linear layer but the output head (the paper does not name the modules;
# dropout 0.05 is TRL's default)
LORA_R, LORA_ALPHA, LORA_DROPOUT, LORA_TARGETS = 32, 64, 0.05, "all-linear"
SFT_LEARNING_RATE, SFT_LR_SCHEDULER, SFT_EPOCHS = 3e-4, "cosine", 1.0
SFT_MAX_LENGTH = 1024  # "filtering for examples with at most 1024 tokens"
RLOO_LEARNING_RATE, RLOO_LR_SCHEDULER = 1e-4, "constant"  # "a fixed learning rate" (TRL: 1e-6)
RLOO_EPOCHS = 1.0  # not given by the paper: one pass over the prompts, as in the SFT (TRL: 3)
NUM_GENERATIONS = 2  # k of RLOO
MAX_PROMPT_LENGTH = 347  # "prompts with fewer than 348 tokens"
MAX_COMPLETION_LENGTH = 512

# The choices of the `--precision` and `--save-dtype` options of the commands (not the paper's: read here by
# the `qrm` parser, which imports nothing heavy, and by the trainer code)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SAVE_DTYPES = ("auto", "bfloat16", "float16", "float32")

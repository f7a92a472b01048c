"""EPIC-KITCHENS-100 multi-instance retrieval (``ek100_mir``) and action classification (``ek100_cls``)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from lavila.evaluation.tasks.base import (
    DataSettings,
    EvalContext,
    Option,
    Prepared,
    Task,
    TaskConfigError,
    is_dual_encoder,
)
from lavila.utils import distributed as du


def _check(kind: str, config: Mapping[str, Any], data: DataSettings, flags: Mapping[str, str],
           training: bool = False) -> None:
    from lavila.data import checks

    try:
        if kind == "mir":
            checks.check_mir(config["metadata"], config["root"], data.chunk_len, training, flags["metadata"],
                             flags["root"], sentences=config.get("mir_sentences"))
        else:
            checks.check_cls(config["metadata"], config["root"], data.chunk_len, flags["metadata"], flags["root"])
    except checks.DataCheckError as exc:
        raise TaskConfigError(str(exc)) from None


class EK100MIR(Task):
    name, aliases, title, flag_prefix = "ek100_mir", ("mir",), "EPIC-KITCHENS-100 multi-instance retrieval", "mir"
    metadata_help = "EPIC_100_retrieval_test.csv"
    root_help = "EK100 video folder (chunked: <root>/<video_id>.MP4/<start>.MP4)"
    options = (
        Option("mir_sentences", ("--mir-sentences",), "default: <metadata stem>_sentence.csv beside it"),
        Option("relevancy_path", ("--relevancy-path",),
               "relevancy pickle (default: <csv dir>/relevancy/caption_relevancy_<stem>.pkl, else rebuilt)"),
        Option("save_similarity", ("--save-similarity",), "save the MIR similarity matrix (mir_similarity.npy)",
               default=False, action="store_true"),
    )
    metric = "avg_map"
    finetune = "retrieval"
    train_help = "EPIC_100_retrieval_train.csv"

    def check(self, config: Mapping[str, Any], data: DataSettings, flags: Mapping[str, str]) -> None:
        _check("mir", config, data, flags)

    def build(self, config: Mapping[str, Any], data: DataSettings) -> Prepared:
        from lavila.data.ek100 import EK100MIRDataset
        from lavila.data.relevancy import resolve_relevancy

        dataset = EK100MIRDataset(config["root"], config["metadata"], is_training=False,
                                  sentence_path=config.get("mir_sentences"), context_length=data.context_length,
                                  **data.clip_kwargs())
        relevancy = resolve_relevancy(dataset.clips, dataset.sentences, config["metadata"],
                                      config.get("relevancy_path"))
        return Prepared(dataset, config, data, {"relevancy": relevancy})

    def evaluate(self, model: nn.Module, prepared: Prepared, loader: Any, ctx: EvalContext) -> dict[str, float]:
        from lavila.evaluation import zeroshot

        metrics, similarity = zeroshot.evaluate_mir(model, loader, prepared.extra["relevancy"], None, ctx.device,
                                                    ctx.autocast)
        if prepared.config.get("save_similarity") and ctx.output_dir and du.is_main_process():
            np.save(Path(ctx.output_dir) / "mir_similarity.npy", similarity)
        return metrics

    def check_train(self, config: Mapping[str, Any], data: DataSettings, flags: Mapping[str, str]) -> None:
        _check("mir", {**config, "metadata": config["train_metadata"], "mir_sentences": None}, data,
               {**flags, "metadata": flags["train_metadata"]}, training=True)

    def build_train(self, config: Mapping[str, Any], data: DataSettings, on_error: str | None) -> Dataset:
        from lavila.data.ek100 import EK100MIRDataset

        return EK100MIRDataset(config["root"], config["train_metadata"], is_training=True,
                               relevancy_path=config.get("train_relevancy_path"), on_error=on_error,
                               context_length=data.context_length, output="uint8", **data.clip_kwargs())


class EK100CLS(Task):
    name, aliases, title, flag_prefix = "ek100_cls", ("cls",), "EPIC-KITCHENS-100 action classification", "cls"
    metadata_help = "EPIC_100_validation.csv"
    root_help = "EK100 video folder (default: --mir-root)"
    root_fallback = "mir_root"
    options = (
        Option("cls_vocab", ("--cls-vocab", "--actions"), "action vocabulary JSON (ActionVocabulary.save)"),
        Option("cls_vocab_csvs", ("--cls-vocab-csvs",), "CSVs whose verb:noun pairs form the vocabulary "
               "(EPIC_100_train.csv EPIC_100_validation.csv; default: the training and evaluation CSVs given)",
               nargs="+"),
        Option("cls_text_csvs", ("--cls-text-csvs",), "CSVs whose narrations are the class texts "
               "(default: --cls-vocab-csvs, else the metadata)", nargs="+"),
        Option("cls_use_template", ("--cls-use-template",), "ensemble the '#C C {}' and '#C {}' templates",
               default=False, action="store_true"),
    )
    metric, unit = "acc1", "percent"
    finetune = "classification"
    train_help = "EPIC_100_train.csv"

    def check(self, config: Mapping[str, Any], data: DataSettings, flags: Mapping[str, str]) -> None:
        _check("cls", config, data, flags)

    def vocabulary(self, config: Mapping[str, Any]) -> Any:
        """The action vocabulary: an ``ActionVocabulary`` or JSON file in ``cls_vocab``, else the verb:noun pairs
        of ``cls_vocab_csvs``, else of the training and evaluation CSVs (LaViLa's 3,806 actions on EK100)."""
        from lavila.data.ek100 import ActionVocabulary

        vocab = config.get("cls_vocab")
        if isinstance(vocab, ActionVocabulary):
            return vocab
        if vocab:
            return ActionVocabulary.load(vocab)
        csvs = config.get("cls_vocab_csvs") or [p for p in (config.get("train_metadata"), config.get("metadata")) if p]
        if not csvs:
            raise TaskConfigError("ek100_cls needs the action vocabulary: the training / evaluation CSVs, "
                                  "--cls-vocab-csvs or --actions FILE.json")
        return ActionVocabulary.from_csvs(csvs)

    def build(self, config: Mapping[str, Any], data: DataSettings) -> Prepared:
        from lavila.data.ek100 import EK100CLSDataset

        vocab = self.vocabulary(config)
        dataset = EK100CLSDataset(config["root"], config["metadata"], vocab, is_training=False,
                                  **data.clip_kwargs())
        return Prepared(dataset, config, data, {"vocab": vocab})

    def class_texts(self, prepared: Prepared) -> list[list[str]]:
        from lavila.data.ek100 import read_ek100_csv, zeroshot_class_texts

        config = prepared.config
        text_csvs = config.get("cls_text_csvs") or config.get("cls_vocab_csvs") or [config["metadata"]]
        templates = ("#C C {}", "#C {}") if config.get("cls_use_template") else ("{}",)
        return zeroshot_class_texts(prepared.extra["vocab"], [read_ek100_csv(p) for p in text_csvs],
                                    templates=templates)

    def evaluate(self, model: nn.Module, prepared: Prepared, loader: Any, ctx: EvalContext) -> dict[str, float]:
        from lavila.evaluation import zeroshot
        from lavila.evaluation.benchmarks import classifier_scores, video_scores
        from lavila.evaluation.classification import ek100_cls_metrics

        vocab = prepared.extra["vocab"]
        if is_dual_encoder(model):
            if "texts" not in prepared.extra:  # read once; embedded at every evaluation (the text tower trains)
                prepared.extra["texts"] = self.class_texts(prepared)
            classes = zeroshot.class_embeddings(model, prepared.extra["texts"], ctx.device, ctx.text_batch_size,
                                                prepared.data.context_length, ctx.autocast)
            metrics, scores = zeroshot.evaluate_zeroshot_cls(model, loader, classes, vocab.act2verb,
                                                             vocab.act2noun, ctx.device, ctx.autocast)
            prepared.outputs = {"scores": scores}
            return metrics
        probs, targets = video_scores(loader, lambda frames: classifier_scores(model, frames), len(vocab),
                                      ctx.device, ctx.autocast)
        prepared.outputs = {"probs": probs.numpy(), "targets": targets.numpy()}
        return ek100_cls_metrics(probs.double().numpy(), targets.numpy(), vocab.act2verb, vocab.act2noun)

    def check_train(self, config: Mapping[str, Any], data: DataSettings, flags: Mapping[str, str]) -> None:
        _check("cls", {**config, "metadata": config["train_metadata"]}, data,
               {**flags, "metadata": flags["train_metadata"]})

    def classes(self, config: Mapping[str, Any]) -> list[str]:
        return list(self.vocabulary(config).actions)

    def keep_classes(self, config: Mapping[str, Any], output_dir: str) -> dict[str, Any]:
        """The vocabulary is saved as ``<output_dir>/actions.json`` and read back on a relaunch (the classifier's
        outputs keep their order)."""
        saved = Path(output_dir) / "actions.json"
        if not config.get("cls_vocab") and saved.is_file():
            config = {**config, "cls_vocab": str(saved)}
        vocab = self.vocabulary(config)
        if du.is_main_process():
            vocab.save(saved)
        return {**config, "cls_vocab": vocab}

    def build_train(self, config: Mapping[str, Any], data: DataSettings, on_error: str | None) -> Dataset:
        from lavila.data.ek100 import EK100CLSDataset

        return EK100CLSDataset(config["root"], config["train_metadata"], self.vocabulary(config), is_training=True,
                               on_error=on_error, output="uint8", **data.clip_kwargs())

"""Every grid of the paper, one short function each. Only what varies is stated; the profile gives the rest.

Factor names are shared across studies so the analysis can put any two side by side: ``size`` (ENC-DEC),
``kind`` (1d/2d), ``semreg`` (semantic regularization on/off), ``align_layer``, ``encoder``, ``lambda``,
``epochs`` (paper epochs), ``entropy`` (on/off), ``ar_size``, ``decoder``; ``seed`` where a study is replicated
over seeds (``--seeds N``, or the profile's default: added by the planner, never named here).
"""

from __future__ import annotations

import dataclasses

from gigatok.runs.spec import PROBE_STAGES, RunSpec
from gigatok.study import Planner, study

PROBE_SIZES = ("S-S", "S-B", "B-L")
# The probe, reporting gFID at the best CFG scale it searched. At the paper profile every study's gFID is searched
# (Planner adds the stage; Profile.cfg_search_every_gfid), as the authors' train_c2i_and_eval.sh does for the probe.
CFG_SEARCHED = (*PROBE_STAGES, "cfg_search")


@study(
    "scaling_vanilla",
    reproduces="Fig. 3",
    about="1D S-S, S-B, B-L without semantic regularization: reconstruction improves, generation does not",
)
def scaling_vanilla(p: Planner) -> list[RunSpec]:
    return [p.probe({"size": n, "semreg": False}, p.tokenizer(n, semantic_weight=0)) for n in PROBE_SIZES]


@study(
    "scaling_semreg", reproduces="Fig. 1 and 7", about="S-S, S-B, B-L, XL-XXL with and without semantic regularization"
)
def scaling_semreg(p: Planner) -> list[RunSpec]:
    return [
        p.probe({"size": n, "semreg": reg}, p.tokenizer(n, semantic_weight=None if reg else 0))
        for n in (*PROBE_SIZES, "XL-XXL")
        for reg in (False, True)
    ]


@study(
    "scaling_1d_vs_2d",
    reproduces="Fig. 9",
    about="S-S, S-B, B-L as 1D (Q-Former) and 2D (ViT) tokenizers, with semantic regularization",
)
def scaling_1d_vs_2d(p: Planner) -> list[RunSpec]:
    return [p.probe({"size": n, "kind": kind}, p.tokenizer(n, kind=kind)) for n in PROBE_SIZES for kind in ("1d", "2d")]


@study("enc_dec_asymmetry", reproduces="Table 2", about="encoder against decoder scaling: B-S, S-B, S-L, B-L")
def enc_dec_asymmetry(p: Planner) -> list[RunSpec]:
    # Table 2 trains all four "under the same setting for 100 epochs".
    return [p.probe({"size": n}, p.tokenizer(n, epochs=p.paper_epochs(100))) for n in ("B-S", "S-B", "S-L", "B-L")]


@study("align_layer", reproduces="Table 5", about="semantic alignment at decoder layer l = 2, 3, 4 (S-S)")
def align_layer(p: Planner) -> list[RunSpec]:
    return [p.probe({"align_layer": layer}, p.tokenizer("S-S", align_layer=layer)) for layer in (2, 3, 4)]


@study("semantic_encoder", reproduces="Table 6", about="CLIP, SigLIP and DINOv2-B as the semantic teacher (S-B)")
def semantic_encoder(p: Planner) -> list[RunSpec]:
    return [
        p.probe({"encoder": enc}, p.tokenizer("S-B", semantic_encoder=enc)) for enc in ("clip", "siglip", "dinov2-b")
    ]


@study("reg_weight", reproduces="Table 7", about="semantic regularization weight lambda = 0.25 to 1.0 (S-S)")
def reg_weight(p: Planner) -> list[RunSpec]:
    return [p.probe({"lambda": w}, p.tokenizer("S-S", semantic_weight=w)) for w in (0.25, 0.5, 0.75, 1.0)]


@study(
    "train_duration",
    reproduces="Fig. 12",
    about="S-S trained 40 to 120 epochs, with and without semantic regularization",
)
def train_duration(p: Planner) -> list[RunSpec]:
    return [
        p.probe(
            {"epochs": e, "semreg": reg},
            p.tokenizer("S-S", epochs=p.paper_epochs(e), semantic_weight=None if reg else 0),
        )
        for e in (40, 60, 80, 100, 120)
        for reg in (False, True)
    ]


@study(
    "entropy_loss",
    reproduces="Fig. 5",
    about="XL-XXL with and without entropy loss: training curves of codebook usage and losses",
)
def entropy_loss(p: Planner) -> list[RunSpec]:
    # Only the tokenizer is trained and scored: the figure is its training curves.
    # Sec. 4.3: without the entropy loss, the 2.9B tokenizer is trained with "the same training recipe as the 622M
    # tokenizer", i.e. the small tokenizers' shortcut and no warm-up (configs/vq/VQ_BL256.yaml), not XL-XXL's warm-up.
    return [
        p.run(
            {"size": "XL-XXL", "entropy": on},
            p.tokenizer("XL-XXL") if on else p.tokenizer("XL-XXL", stabiliser="shortcut", entropy_weight=0.0),
            stages=("tokenizer", "reconstruction"),
        )
        for on in (False, True)
    ]


@study(
    "ar_probe_vs_large",
    reproduces="Fig. 6",
    about="S-S, S-L, B-L probed by the 111M AR probe and by a sufficiently trained 775M AR-XL",
)
def ar_probe_vs_large(p: Planner) -> list[RunSpec]:
    # Sec. 5.1: the probe's trends against "the larger LlamaGen-XL", "after sufficient training" (Sec. 3.1): AR-XL
    # with the system-level recipe. gFID at the best constant-schedule CFG scale of each AR model (Appendix B), found
    # by the cfg_search stage.
    runs = []
    for n in ("S-S", "S-L", "B-L"):
        tok = p.tokenizer(n)
        runs.append(p.run({"size": n, "ar_size": "B"}, tok, p.ar(tok, "B"), stages=CFG_SEARCHED))
        runs.append(p.run({"size": n, "ar_size": "XL"}, tok, p.ar(tok, "XL", system=True), stages=CFG_SEARCHED))
    return runs


@study(
    "system_level",
    reproduces="Tables 3 and 10",
    about="the final tokenizers with AR-B, and B-L / XL-XXL with the 1.4B AR-XXL, AR trained 300 epochs; B-L "
    "with the frozen-DINO discriminator and AR-B (the double-dagger row)",
)
def system_level(p: Planner) -> list[RunSpec]:
    pairs = [("S-S", "B"), ("S-B", "B"), ("B-L", "B"), ("XL-XXL", "B"), ("B-L", "XXL"), ("XL-XXL", "XXL")]
    # Appendix B: system-level gFID uses the step schedule (the first 18% of tokens unguided) at the best scale.
    step = dataclasses.replace(p.profile.eval, cfg_schedule="step")
    runs = []
    for n, ar in pairs:
        tok = p.tokenizer(n)
        # Appendix B's recipe of each size: 300 epochs, WSD with sqrt decay, batch 512 for AR-XXL (256 otherwise).
        runs.append(p.run({"size": n, "ar_size": ar}, tok, p.ar(tok, ar, system=True), stages=CFG_SEARCHED, eval=step))
    # The B-L row marked with a double dagger: VQ_BL256_dino_disc.yaml (VQ_BL256.yaml with disc_type "dinodisc" and
    # disc_start 80000), probed by AR-B for 300 epochs (the released GPT_B256_e300_VQ_BL_dino_disc.pt).
    dino = p.tokenizer("B-L", discriminator="dino")
    runs.append(
        p.run({"size": "B-L-dino", "ar_size": "B"}, dino, p.ar(dino, "B", system=True), stages=CFG_SEARCHED, eval=step)
    )
    return runs


@study(
    "decode_cost",
    reproduces="Table 4",
    about="share of generation time spent decoding: decoders B, L, XXL against AR models B, L, XXL",
    seeded=False,
)
def decode_cost(p: Planner) -> list[RunSpec]:
    # Timing needs the shapes, not trained weights: nothing is trained (the decoder sizes of S-B, S-L, XL-XXL).
    decoders = {"B": "S-B", "L": "S-L", "XXL": "XL-XXL"}
    runs = []
    for dec, name in decoders.items():
        tok = p.tokenizer(name)
        for ar in ("B", "L", "XXL"):
            runs.append(p.run({"decoder": dec, "ar_size": ar}, tok, p.ar(tok, ar), stages=("decode_cost",)))
    return runs


@study(
    "feature_pca",
    reproduces="Fig. 8",
    about="PCA of B-L decoder features over same-class images, with and without semantic regularization",
)
def feature_pca(p: Planner) -> list[RunSpec]:
    # The tokenizers are scaling_semreg's B-L pair (same configs, so trained once for both studies).
    return [
        p.run(
            {"size": "B-L", "semreg": reg},
            p.tokenizer("B-L", semantic_weight=None if reg else 0),
            stages=("tokenizer", "feature_pca"),
        )
        for reg in (False, True)
    ]


@study(
    "tokenizer_checkpoints",
    reproduces="Fig. 13",
    about="B-L and XL-XXL probed at five checkpoints of their training (tokenizer and AR linear probes, gFID)",
)
def tokenizer_checkpoints(p: Planner) -> list[RunSpec]:
    runs = []
    for name in ("B-L", "XL-XXL"):
        base = p.tokenizer(name)
        epochs = base.train.epochs
        snapshots = tuple(round(epochs * k / 5, 6) for k in range(1, 6))  # 20%, 40%, ... 100% of training
        tok = dataclasses.replace(base, train=dataclasses.replace(base.train, snapshot_epochs=snapshots))
        for at in snapshots:
            # The factor is in paper epochs, so tiny and paper runs of this study share the figure's x axis.
            paper = round(at / p.profile.epochs_per_paper_epoch, 3)
            runs.append(
                p.run(
                    {"size": name, "checkpoint": int(paper) if paper.is_integer() else paper},
                    tok,
                    p.ar(tok, "B"),
                    tokenizer_snapshot=at,
                )
            )
    return runs


# Released models are converted, not trained: the tokenizer and ar stages convert the authors' files (found in the
# weights folder under their registry names) into the run folders every later stage reads.
RELEASED_STAGES = (
    "tokenizer",
    "reconstruction",
    "tokenizer_probe",
    "token_cache",
    "ar",
    "cfg_search",
    "generation",
    "ar_probe",
)


@study(
    "released_checkpoints",
    reproduces="README (released checkpoints)",
    about="the authors' released tokenizers and AR models, evaluated without training: reconstruction, "
    "CFG-searched gFID, linear probes",
    seeded=False,
)
def released_checkpoints(p: Planner) -> list[RunSpec]:
    from gigatok.convert.released import RELEASED, RELEASED_AR_MODELS, released_ar_run, released_tokenizer_run

    # The README's GPT-B numbers are probe gFIDs, searched with the constant schedule (train_c2i_and_eval.sh); its
    # GPT-XL/XXL numbers are Table 3's system-level ones, with the step schedule (as the system_level study).
    step = dataclasses.replace(p.profile.eval, cfg_schedule="step")
    runs = []
    for name in RELEASED_AR_MODELS:
        ar_model = RELEASED[name]
        tok_model = RELEASED[ar_model.tokenizer]
        tok = released_tokenizer_run(tok_model.name, p.profile_name, p.data_root)
        factors = {"size": tok_model.size, "disc": tok_model.disc, "ar_size": ar_model.size}
        runs.append(
            p.run(
                factors,
                tok,
                released_ar_run(name, tok),
                stages=RELEASED_STAGES,
                eval=None if ar_model.size == "B" else step,
            )
        )
    return runs

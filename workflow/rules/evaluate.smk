# Evaluation stage: frozen features -> OpenBHB challenge scores per method and seed -> the
# aggregated table (Table 3 layout of Barbano et al., ISBI 2023) with summary figures.


EVAL = config["evaluation"]
EVAL_METHODS = list(config.get("train", {}).get("methods", []))
EVAL_SEEDS = list(config.get("train", {}).get("seeds", []))
TABLE_DIR = f"{RESULTS}/tables"
TRAIN_CFG = config.get("train", {})
# Table labels: the kernel of the contrastive losses (and, via --formulation, the equation
# trained), the width of the network.
EVAL_DETAILS = (
    f"{TRAIN_CFG['kernel']}, sigma {TRAIN_CFG['sigma']:g}"
    if "kernel" in TRAIN_CFG and "sigma" in TRAIN_CFG
    else ""
)
EVAL_MODEL = EVAL.get("model_label") or (
    "ResNet-18"
    if float(TRAIN_CFG.get("width", 1.0)) == 1.0
    else f"ResNet-18 (width {float(TRAIN_CFG['width']):g})"
)


wildcard_constraints:
    method="[A-Za-z0-9_]+",
    seed="[0-9]+",


# The challenge-style folds (`evaluation.folds`, `fold_ids`): the user's files, inputs of every
# evaluate job when the config names them.
EVAL_FOLD_FILES = (
    {key: EVAL[key] for key in ("folds", "fold_ids") if EVAL.get(key)} if EVAL.get("folds") else {}
)

# Probe options of `brainage evaluate`; keys left at null keep the challenge's values.
EVAL_OPTIONS = cli_options(
    {
        "cv": EVAL["cv"],
        "max_iter": EVAL["max_iter"],
        "random_state": EVAL["random_state"],
        "n_jobs": EVAL["n_jobs"],
        "bias_cv": EVAL["bias_cv"],
        "model": EVAL_MODEL,
        "alphas": comma_list(EVAL["alphas"]) if EVAL.get("alphas") else None,
        "cs": comma_list(EVAL["cs"]) if EVAL.get("cs") else None,
        "folds": EVAL_FOLD_FILES.get("folds"),
        "fold_ids": EVAL_FOLD_FILES.get("fold_ids"),
        "tsne": EVAL["tsne"],
        "allow_over_limit": EVAL["allow_over_limit"],
    },
    negatable=False,
)


# The t-SNE figure exists only when the config asks for it (`evaluation.tsne`, option --tsne).
EVAL_TSNE_OUTPUT = (
    {
        "embedding_tsne": report(
            f"{RESULTS}/evaluation/{{method}}/seed{{seed}}/figures/embedding_tsne.png",
            caption="../report/evaluation_run.rst",
            category="OpenBHB evaluation",
            subcategory="{method}",
            labels={"method": "{method}", "seed": "{seed}", "figure": "t-SNE embedding by site"},
        )
    }
    if EVAL["tsne"]
    else {}
)


rule evaluate:
    input:
        unpack(lambda wc: {**{s: features_path(wc.method, wc.seed, s) for s in SPLITS}, **EVAL_FOLD_FILES}),
    output:
        scores=evaluation_path("{method}", "{seed}"),
        predictions=f"{RESULTS}/evaluation/{{method}}/seed{{seed}}/predictions.csv",
        predicted_vs_true=report(
            f"{RESULTS}/evaluation/{{method}}/seed{{seed}}/figures/predicted_vs_true.png",
            caption="../report/evaluation_run.rst",
            category="OpenBHB evaluation",
            subcategory="{method}",
            labels={"method": "{method}", "seed": "{seed}", "figure": "predicted vs true age"},
        ),
        per_site=report(
            f"{RESULTS}/evaluation/{{method}}/seed{{seed}}/figures/per_site_mae.png",
            caption="../report/evaluation_run.rst",
            category="OpenBHB evaluation",
            subcategory="{method}",
            labels={"method": "{method}", "seed": "{seed}", "figure": "MAE per site"},
        ),
        embedding=report(
            f"{RESULTS}/evaluation/{{method}}/seed{{seed}}/figures/embedding_pca.png",
            caption="../report/evaluation_run.rst",
            category="OpenBHB evaluation",
            subcategory="{method}",
            labels={"method": "{method}", "seed": "{seed}", "figure": "PCA embedding by site"},
        ),
        **EVAL_TSNE_OUTPUT,
    params:
        features=lambda wildcards, input: os.path.dirname(input.train),
        out=lambda wildcards, output: os.path.dirname(output.scores),
        options=EVAL_OPTIONS,
        details=lambda wc: (
            cli_options({"details": EVAL_DETAILS, "formulation": TRAIN_CFG.get("formulation", "reference")})
            if EVAL_DETAILS and wc.method in CONTRASTIVE_METHODS
            else ""
        ),
    log:
        f"{LOGS}/evaluate/{{method}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{method}}_seed{{seed}}.tsv"
    threads: EVAL["n_jobs"]
    shell:
        "brainage evaluate --features {params.features} --out {params.out} "
        "--method {wildcards.method} --seed {wildcards.seed} {params.options} {params.details} "
        "> {log} 2>&1"


# The reference rows (constant features, age oracle) are scored on the subjects of one method's
# feature files: every method's files hold the same subjects, ages, sites and sex.
TABLE_ENABLED = bool(EVAL_METHODS and EVAL_SEEDS)

if TABLE_ENABLED:

    rule evaluate_reference:
        input:
            unpack(
                lambda wc: {
                    **{s: features_path(EVAL_METHODS[0], EVAL_SEEDS[0], s) for s in SPLITS},
                    **EVAL_FOLD_FILES,
                }
            ),
        output:
            scores=reference_path("{kind}"),
            predictions=f"{RESULTS}/evaluation/reference/{{kind}}/predictions.csv",
        wildcard_constraints:
            kind="|".join(REFERENCE_KINDS),
        params:
            features=lambda wildcards, input: os.path.dirname(input.train),
            out=lambda wildcards, output: os.path.dirname(output.scores),
            options=EVAL_OPTIONS,
        log:
            f"{LOGS}/evaluate/reference_{{kind}}.log",
        benchmark:
            f"{BENCH}/evaluate/reference_{{kind}}.tsv"
        threads: EVAL["n_jobs"]
        shell:
            "brainage evaluate --features {params.features} --out {params.out} "
            "--reference {wildcards.kind} {params.options} > {log} 2>&1"

    rule table:
        input:
            scores=[evaluation_path(m, s) for m in EVAL_METHODS for s in EVAL_SEEDS]
            + [reference_path(k) for k in REFERENCE_KINDS],
            # the ComBat cache's metadata: its external-site strategy is noted under the table
            harmonization=rules.harmonize.output.meta if HARMONIZE_ENABLED else [],
        output:
            csv=report(
                f"{TABLE_DIR}/openbhb_table.csv",
                caption="../report/openbhb_table.rst",
                category="OpenBHB evaluation",
                subcategory="table",
            ),
            md=f"{TABLE_DIR}/openbhb_table.md",
            summary=report(
                f"{TABLE_DIR}/openbhb_table_summary.png",
                caption="../report/openbhb_summary.rst",
                category="OpenBHB evaluation",
                subcategory="table",
            ),
            tradeoff=report(
                f"{TABLE_DIR}/openbhb_table_tradeoff.png",
                caption="../report/openbhb_tradeoff.rst",
                category="OpenBHB evaluation",
                subcategory="table",
            ),
        params:
            out=lambda wildcards, output: os.path.dirname(output.csv),
            harmonization=lambda wildcards, input: cli_flag("harmonization_meta", input.get("harmonization") or None),
        log:
            f"{LOGS}/table.log",
        benchmark:
            f"{BENCH}/table.tsv"
        shell:
            "brainage table --scores {input.scores} --out {params.out} {params.harmonization} > {log} 2>&1"

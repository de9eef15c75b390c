# Model bundle: the submission run (config `submission.method` / `submission.seed`) exported as a
# portable, self-describing folder that `brainage predict` applies to new scans (docs/predict.md).
# It reuses the run's features and scores; the source data give the source-grid mask and the QC
# ranges of the training images.

BUNDLE_DIR = f"{RESULTS}/model/{SUBMISSION_RUN}"


if SUBMISSION["bundle"] and not SUBMISSION_TRAINED:
    raise ValueError(
        f"submission.bundle: method {SUBMISSION['method']!r} seed {SUBMISSION['seed']} is not trained by this "
        f"config (train.methods {TRAIN['methods']}, train.seeds {TRAIN['seeds']}); change `submission:` or set "
        "bundle: false"
    )


BUNDLE_ENABLED = SUBMISSION["bundle"]


if BUNDLE_ENABLED:

    rule export_bundle:
        input:
            model=f"{train_dir(SUBMISSION['method'], SUBMISSION['seed'])}/model.pt",
            cache=f"{cache_dir()}/cache.json",
            features=[
                features_path(SUBMISSION["method"], SUBMISSION["seed"], split)
                for split in SPLITS
            ],
            scores=evaluation_path(SUBMISSION["method"], SUBMISSION["seed"]),
            data=preprocess_input(),
        output:
            bundle=f"{BUNDLE_DIR}/bundle.json",
            weights=f"{BUNDLE_DIR}/weights.pt",
            card=report(
                f"{BUNDLE_DIR}/MODEL_CARD.md",
                caption="../report/model_card.rst",
                category="Model bundle",
            ),
        params:
            run=lambda wildcards, input: os.path.dirname(input.model),
            cache=lambda wildcards, input: os.path.dirname(input.cache),
            features=lambda wildcards, input: os.path.dirname(input.features[0]),
            # from the input when the run simulates it (lint: no hard-coded input prefix), else the download
            data=lambda wildcards, input: input.data if len(input.data) else data_root(),
            out=lambda wildcards, output: os.path.dirname(output.bundle),
        log:
            f"{LOGS}/bundle/export_{SUBMISSION_RUN}.log",
        benchmark:
            f"{BENCH}/bundle/export_{SUBMISSION_RUN}.tsv"
        threads: TRAIN["threads"]
        shell:
            "brainage export --run {params.run} --cache {params.cache} --data {params.data} "
            "--features {params.features} --scores {input.scores} --out {params.out} "
            "--num-threads {threads} --quiet > {log} 2>&1"

# Submission stage: one trained run -> an OpenBHB challenge submission folder, and a local check
# that runs it as the server does, compares its features with the run's and scores them
# (docs/submission.md).

SUBMISSION = config["submission"]
SUBMISSION_RUN = f"{SUBMISSION['method']}_seed{SUBMISSION['seed']}"
SUBMISSION_DIR = f"{RESULTS}/submission/{SUBMISSION_RUN}"
SUBMISSION_FILES = ["estimator.py", "weights.pth", "metadata.pkl"]


SUBMISSION_TRAINED = SUBMISSION["method"] in TRAIN["methods"] and SUBMISSION["seed"] in TRAIN["seeds"]
if SUBMISSION["enabled"] and not SUBMISSION_TRAINED:
    raise ValueError(
        f"submission: method {SUBMISSION['method']!r} seed {SUBMISSION['seed']} is not trained by this config "
        f"(train.methods {TRAIN['methods']}, train.seeds {TRAIN['seeds']}); "
        "change `submission:` or set enabled: false"
    )


SUBMISSION_ENABLED = SUBMISSION["enabled"] and SUBMISSION_TRAINED
SUBMISSION_CHECK_ENABLED = SUBMISSION_ENABLED and SUBMISSION["check"]


if SUBMISSION_ENABLED:

    rule submission:
        input:
            model=f"{train_dir(SUBMISSION['method'], SUBMISSION['seed'])}/model.pt",
            cache=f"{cache_dir()}/cache.json",
        output:
            [f"{SUBMISSION_DIR}/{name}" for name in SUBMISSION_FILES],
        params:
            run=lambda wildcards, input: os.path.dirname(input.model),
            cache=lambda wildcards, input: os.path.dirname(input.cache),
            out=lambda wildcards, output: os.path.dirname(output[0]),
            kind=cli_flag("kind", SUBMISSION["kind"] or None),
        log:
            f"{LOGS}/submission/build_{SUBMISSION_RUN}.log",
        benchmark:
            f"{BENCH}/submission/build_{SUBMISSION_RUN}.tsv"
        shell:
            "brainage submission --run {params.run} --cache {params.cache} --out {params.out} "
            "{params.kind} > {log} 2>&1"

    rule submission_check:
        input:
            submission=rules.submission.output,
            features=[
                features_path(SUBMISSION["method"], SUBMISSION["seed"], split)
                for split in SPLITS
            ],
            scores=evaluation_path(SUBMISSION["method"], SUBMISSION["seed"]),
            data=preprocess_input(),
        output:
            json=f"{RESULTS}/submission/check.json",
            md=report(
                f"{RESULTS}/submission/check.md",
                caption="../report/submission_check.rst",
                category="OpenBHB submission",
            ),
        params:
            submission=lambda wildcards, input: os.path.dirname(input.submission[0]),
            # from the input when the run simulates it (lint: no hard-coded input prefix), else the download
            data=lambda wildcards, input: input.data if len(input.data) else data_root(),
            layout=config["data"]["layout"],
            features=lambda wildcards, input: os.path.dirname(input.features[0]),
            out=lambda wildcards, output: os.path.dirname(output.json),
            workdir=f"{RESOURCES}/submission_check",
            rtol=SUBMISSION["rtol"],
            atol=SUBMISSION["atol"],
        log:
            f"{LOGS}/submission/check_{SUBMISSION_RUN}.log",
        benchmark:
            f"{BENCH}/submission/check_{SUBMISSION_RUN}.tsv"
        shell:
            "brainage submission-check --submission {params.submission} --data {params.data} "
            "--layout {params.layout} --features {params.features} --scores {input.scores} "
            "--out {params.out} --workdir {params.workdir} --rtol {params.rtol} --atol {params.atol} "
            "> {log} 2>&1"

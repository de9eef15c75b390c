# Training stage: one network per method and seed -> its frozen features for every split.
# `combat_l1` trains the L1 model on the ComBat-harmonised cache (harmonize.smk); the other
# methods on the preprocessed cache. Every key of `train:` except the workflow keys below is a
# `brainage train` option (docs/training.md); see workflow/schemas/config.schema.yaml.
# The helpers (train_cache, train_options) live in common.smk.


rule train:
    wildcard_constraints:
        **TRAIN_WILDCARDS,
    input:
        cache=lambda wc: f"{train_cache(wc)}/cache.json",
    output:
        model=f"{train_dir('{method}', '{seed}')}/model.pt",
        metrics=f"{train_dir('{method}', '{seed}')}/metrics.csv",
    params:
        cache=lambda wildcards, input: os.path.dirname(input.cache),
        out=lambda wildcards, output: os.path.dirname(output.model),
        options=lambda wildcards: train_options(wildcards.method),
    log:
        f"{LOGS}/train/{{method}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train/{{method}}_seed{{seed}}.tsv"
    threads: TRAIN["threads"]
    resources:
        gpu=0 if TRAIN["device"] == "cpu" else 1,
    shell:
        "brainage train --cache {params.cache} --method {wildcards.method} --seed {wildcards.seed} "
        "--out {params.out} {params.options} --num-threads {threads} --no-progress "
        "--restart-on-mismatch > {log} 2>&1"


rule features:
    wildcard_constraints:
        **TRAIN_WILDCARDS,
    input:
        model=rules.train.output.model,
        cache=lambda wc: f"{train_cache(wc)}/cache.json",
    output:
        [features_path("{method}", "{seed}", split) for split in SPLITS],
    params:
        run=lambda wildcards, input: os.path.dirname(input.model),
        cache=lambda wildcards, input: os.path.dirname(input.cache),
        out=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/features/{{method}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/features/{{method}}_seed{{seed}}.tsv"
    threads: TRAIN["threads"]
    shell:
        "brainage features --run {params.run} --cache {params.cache} --out {params.out} "
        "--num-threads {threads} > {log} 2>&1"

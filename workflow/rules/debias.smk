# Debiasing track (docs/debiasing.md): Biased-MNIST -> one model per method, rho and seed ->
# accuracy + privacy attacker per method -> the seed's Table 2 layout and the privacy
# table. Every rule calls the `brainage` command line; see the `debias:` section of
# workflow/schemas/config.schema.yaml.

DEBIAS = config["debias"]
DEBIAS_DIR = f"{RESULTS}/debias"
DEBIAS_DATA = f"{DEBIAS_DIR}/data/biased_mnist"
DEBIAS_WILDCARDS = {"method": "[a-z-]+", "rho": "[0-9.]+", "seed": "[0-9]+"}
DEBIAS_METHOD_KEYS = ("temperature", "epsilon", "alpha", "lambd", "fairkl_formulation", "end_alpha", "end_beta")
DEBIAS_TRAIN_KEYS = (
    "model", "width", "cifar_stem", "epochs", "batch_size", "lr", "weight_decay", "gamma", "probe_lr", "device"
)


# rho as spelled in file names
DEBIAS_RHOS = [format_rho(r) for r in DEBIAS["rhos"]]
DEBIAS_SPLIT_FLAGS = cli_options({part: DEBIAS["split"].get(part) for part in ("train", "val", "test")})

# `brainage debias-train` options per method: the `debias:` keys, then `debias.overrides[method]`
DEBIAS_TRAIN_OPTIONS = {
    method: {
        **{k: DEBIAS[k] for k in DEBIAS_METHOD_KEYS + DEBIAS_TRAIN_KEYS + ("milestones",)},
        **DEBIAS["overrides"].get(method, {}),
    }
    for method in DEBIAS["methods"]
}
DEBIAS_TRAIN_FLAGS = {
    method: cli_options({**options, "milestones": comma_list(options["milestones"])})
    for method, options in DEBIAS_TRAIN_OPTIONS.items()
}


rule debias_data:
    output:
        train=expand(f"{DEBIAS_DATA}/train_rho{{rho}}.npz", rho=DEBIAS_RHOS),
        val=f"{DEBIAS_DATA}/val.npz",
        test=f"{DEBIAS_DATA}/test.npz",
        test_biased=f"{DEBIAS_DATA}/test_biased.npz",
        summary=f"{DEBIAS_DATA}/summary.json",
        figure=report(
            f"{DEBIAS_DATA}/examples.png", caption="../report/debias_examples.rst", category="Debiasing track"
        ),
    params:
        source=DEBIAS["source"],
        rhos=" ".join(DEBIAS_RHOS),
        split=DEBIAS_SPLIT_FLAGS,
        seed=DEBIAS["data_seed"],
        palette=DEBIAS["palette"],
        out=lambda wildcards, output: os.path.dirname(output.summary),
    log:
        f"{LOGS}/debias/data.log",
    benchmark:
        f"{BENCH}/debias/data.tsv"
    shell:
        "brainage debias-data biased-mnist --source {params.source} --out {params.out} "
        "--rho {params.rhos} {params.split} --seed {params.seed} --palette {params.palette} "
        "--figure {output.figure} > {log} 2>&1"


rule debias_train:
    wildcard_constraints:
        **DEBIAS_WILDCARDS,
    input:
        train=f"{DEBIAS_DATA}/train_rho{{rho}}.npz",
        val=rules.debias_data.output.val,
        monitor=rules.debias_data.output.test,
    output:
        model=f"{DEBIAS_DIR}/models/{{method}}/rho{{rho}}/seed{{seed}}.pt",
        history=f"{DEBIAS_DIR}/models/{{method}}/rho{{rho}}/seed{{seed}}.json",
    params:
        options=lambda wildcards: DEBIAS_TRAIN_FLAGS[wildcards.method],
    log:
        f"{LOGS}/debias/train/{{method}}_rho{{rho}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/debias/train/{{method}}_rho{{rho}}_seed{{seed}}.tsv"
    threads: DEBIAS["threads"]
    resources:
        gpu=0 if DEBIAS["device"] == "cpu" else 1,
    shell:
        "brainage debias-train --train {input.train} --val {input.val} --monitor {input.monitor} "
        "--method {wildcards.method} --seed {wildcards.seed} --tag rho={wildcards.rho} {params.options} "
        "--threads {threads} --out {output.model} --history {output.history} --quiet > {log} 2>&1"


# One evaluation job per method (every rho and seed): the work per model is small next to the
# start-up of a process.
rule debias_eval:
    wildcard_constraints:
        **DEBIAS_WILDCARDS,
    input:
        models=expand(
            f"{DEBIAS_DIR}/models/{{{{method}}}}/rho{{rho}}/seed{{seed}}.pt",
            rho=DEBIAS_RHOS,
            seed=DEBIAS["seeds"],
        ),
        test=rules.debias_data.output.test,
        test_biased=rules.debias_data.output.test_biased,
        attacker=rules.debias_data.output.val,
        train=expand(f"{DEBIAS_DATA}/train_rho{{rho}}.npz", rho=DEBIAS_RHOS),
    output:
        f"{DEBIAS_DIR}/eval/{{method}}.json",
    params:
        linear=cli_flag("linear_eval", DEBIAS["linear_eval"], negatable=False),
    log:
        f"{LOGS}/debias/eval/{{method}}.log",
    benchmark:
        f"{BENCH}/debias/eval/{{method}}.tsv"
    threads: DEBIAS["threads"]
    shell:
        "brainage debias-eval --model {input.models} --test {input.test} "
        "--test-biased {input.test_biased} --attacker-train {input.attacker} "
        "{params.linear} --threads {threads} --out {output} > {log} 2>&1"


rule debias_table:
    input:
        [f"{DEBIAS_DIR}/eval/{m}.json" for m in DEBIAS["methods"]],
    output:
        table2=report(
            f"{DEBIAS_DIR}/tables/table2.md", caption="../report/debias_tables.rst", category="Debiasing track"
        ),
        table2_csv=f"{DEBIAS_DIR}/tables/table2.csv",
        privacy=report(
            f"{DEBIAS_DIR}/tables/privacy.md", caption="../report/debias_tables.rst", category="Debiasing track"
        ),
        privacy_csv=f"{DEBIAS_DIR}/tables/privacy.csv",
        runs=f"{DEBIAS_DIR}/tables/runs.csv",
    params:
        out=lambda wildcards, output: os.path.dirname(output.table2),
        note=DEBIAS["note"],
    log:
        f"{LOGS}/debias/table.log",
    benchmark:
        f"{BENCH}/debias/table.tsv"
    shell:
        "brainage debias-table --eval {input} --out-dir {params.out} --note {params.note:q} > {log} 2>&1"


# The track's final files; part of the default target when `debias.enabled`.
rule debias_all:
    localrule: True
    input:
        rules.debias_table.output.table2,
        rules.debias_table.output.privacy,
        rules.debias_data.output.figure,

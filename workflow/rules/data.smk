# Data stage: simulate (embedded default only) -> preprocess into the training cache.


if config["data"]["source"] == "simulate":

    rule simulate:
        output:
            directory(f"{RESOURCES}/synthetic"),
        params:
            n=config["data"]["simulate"]["n_subjects"],
            factor=config["data"]["simulate"]["downsample"],
            seed=config["data"]["simulate"]["seed"],
            n_sites=config["data"]["simulate"]["n_sites"],
            modalities=",".join(config["data"]["simulate"]["modalities"]),
        log:
            f"{LOGS}/simulate.log",
        benchmark:
            f"{BENCH}/simulate.tsv"
        threads: 4
        shell:
            "brainage simulate --out {output} --n-subjects {params.n} "
            "--downsample {params.factor} --seed {params.seed} --n-sites {params.n_sites} "
            "--modalities {params.modalities} --n-jobs {threads} > {log} 2>&1"


rule preprocess:
    input:
        preprocess_input(),
    output:
        arrays=expand(f"{RESOURCES}/cache/{{split}}.npy", split=SPLITS),
        index=expand(f"{RESOURCES}/cache/{{split}}.tsv", split=SPLITS),
        mask=f"{RESOURCES}/cache/mask.nii.gz",
        meta=f"{RESOURCES}/cache/cache.json",
    params:
        root=lambda wildcards, input: input[0] if len(input) else data_root(),
        layout=config["data"]["layout"],
        modality=config["data"]["modality"],
        factor=config["preprocess"]["downsample"],
        normalize=config["preprocess"]["normalize"],
        chunk=config["preprocess"]["chunk"],
        out=lambda wildcards, output: os.path.dirname(output.meta),
    log:
        f"{LOGS}/preprocess.log",
    benchmark:
        f"{BENCH}/preprocess.tsv"
    shell:
        "brainage preprocess --data {params.root} --layout {params.layout} "
        "--modality {params.modality} --downsample {params.factor} "
        "--normalize {params.normalize} --chunk {params.chunk} --out {params.out} > {log} 2>&1"

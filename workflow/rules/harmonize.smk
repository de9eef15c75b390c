# Harmonisation stage of the ComBat baseline: training cache -> ComBat-harmonised cache
# (fitted on train with SITE, sex and the training ages protected; age-free transform of every
# split; see docs/harmonization.md). Only when the config trains combat_l1.

HARMONIZE_ENABLED = "combat_l1" in config.get("train", {}).get("methods", METHODS)


if HARMONIZE_ENABLED:

    rule harmonize:
        input:
            f"{cache_dir()}/cache.json",
        output:
            arrays=expand(f"{harmonized_cache_dir()}/{{split}}.npy", split=SPLITS),
            index=expand(f"{harmonized_cache_dir()}/{{split}}.tsv", split=SPLITS),
            mask=f"{harmonized_cache_dir()}/mask.nii.gz",
            model=f"{harmonized_cache_dir()}/model.npz",
            meta=f"{harmonized_cache_dir()}/cache.json",
        params:
            cache=lambda wildcards, input: os.path.dirname(input[0]),
            out=lambda wildcards, output: os.path.dirname(output.meta),
            chunk=config["harmonize"]["chunk_size"],
            external=config["harmonize"]["external"],
            eb=cli_flag("no_eb", not config["harmonize"]["eb"], negatable=False),  # the CLI has --no-eb only
            adjust=config["harmonize"]["adjust"],
            age_degree=config["harmonize"]["age_degree"],
        log:
            f"{LOGS}/harmonize.log",
        benchmark:
            f"{BENCH}/harmonize.tsv"
        shell:
            "brainage harmonize --cache {params.cache} --out {params.out} "
            "--chunk-size {params.chunk} --external {params.external} --adjust {params.adjust} "
            "--age-degree {params.age_degree} {params.eb} > {log} 2>&1"

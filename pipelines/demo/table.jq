# pipelines/demo/table.jq: the demo's table (markdown) from the rows of metrics.jq, slurped.
def f: . * 1000 | round / 1000 | tostring;
def pct: . * 1000 | round / 10 | tostring + "%";
"| model | held-out loss | uses the asked name | pair accuracy | reward accuracy (vs SFT) |",
"| --- | ---: | ---: | ---: | ---: |",
(.[] | "| \(.model) | \(.loss | f) | \(.uses_name | pct) (of \(.n_prompts)) | \(.pair_acc | pct) | \(.reward_acc | pct) (of \(.n_pairs)) |")

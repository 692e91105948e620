# pipelines/demo/metrics.jq: one model's row of the demo table, from
#   $gen    its generations for the held-out prompts (slurped), with $prompts (same order);
#   $test   `ftk dump` of the held-out SFT batches with its ref_logps (slurped): the loss;
#   $pairs  `ftk dump` of the held-out pairs with its ref_logps, and $ref the same under the
#           SFT model: pair accuracy and DPO's implicit reward accuracy (reference: SFT).
def uses($name): test("\\b" + $name + "\\b");
def batches: map(select(.kind == "batch"));
def rows_logps: batches | map(.tensors.ref_logps as $lp | (($lp | length) / 2) as $p
                              | range($p) | {c: $lp[.], r: $lp[. + $p]});
($test | batches) as $tb
| {model: $model,
   loss: (($tb | map([.tensors.labels[][] | select(. != -100)] | length) | add // 0) as $n
          | if $n == 0 then null else - ($tb | map(.tensors.ref_logps | add) | add) / $n end),
   uses_name: (if ($gen | length) == 0 then null else
               (([$prompts, $gen] | transpose | map(select(.[0].name as $n | .[1].text | uses($n))) | length)
               / ($gen | length)) end),
   n_prompts: ($gen | length)}
| . + ([($pairs | rows_logps), ($ref | rows_logps)] | transpose
       | (if length == 0 then {pair_acc: null, reward_acc: null, n_pairs: 0}   # an unlucky QUICK run
          else {pair_acc: ((map(select(.[0].c > .[0].r)) | length) / length),
                reward_acc: ((map(select(.[0].c - .[1].c > .[0].r - .[1].r)) | length) / length),
                n_pairs: length} end))

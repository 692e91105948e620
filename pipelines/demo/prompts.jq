# pipelines/demo/prompts.jq: instruction prompts for names of some groups, $k samples each.
# In: names.txt as $names; --arg groups "sft,dpo"; --argjson k N.
def group($n): if $n % 4 == 2 then "dpo" elif $n % 4 == 3 then "test" else "sft" end;
($groups | split(",")) as $g
| [$names | split("\n")[] | select(length > 0)] | to_entries[]
| select(group(.key) | IN($g[])) | .value as $name
| range($k) | {prompt: ("Write a story about " + $name + "."), name: $name}

# pipelines/demo/seed.jq: story openers for the base model, one JSON line per prompt.
# In: names.txt as a raw string ($names); --argjson k SAMPLES; --arg group sft|dpo|test.
# Names are split by position: line n (0-based) is in "dpo" when n % 4 == 2, "test" when
# n % 4 == 3, else "sft": held-out names never meet SFT or DPO.
def group($n): if $n % 4 == 2 then "dpo" elif $n % 4 == 3 then "test" else "sft" end;
[$names | split("\n")[] | select(length > 0)] | to_entries[]
| select(group(.key) == $group) | .value as $name
| ("Once upon a time, there was a little girl named NAME.",
   "Once upon a time, there was a little boy named NAME.",
   "One day, a dog named NAME went to the park.",
   "NAME was a happy cat who liked to play.") as $opener
| range($k)
| {prompt: ($opener | gsub("NAME"; $name)), name: $name}

# pipelines/demo/pairs.jq: the scripted preference. Samples of one prompt that use the name it
# asks for are chosen, those that do not are rejected; each chosen one is paired with one
# rejected one (as many pairs as the smaller side has). Out: alpaca pairwise records.
def uses($name): test("\\b" + $name + "\\b");
def story: sub("[^.!?\"]*$"; "");
[$prompts, $gen] | transpose | map({p: .[0], text: (.[1].text | story)}) | map(select(.text != ""))
| group_by(.p.prompt)[]
| .[0].p as $p
| [map(select(.text | uses($p.name))), map(select(.text | uses($p.name) | not))]
| [.[0][:(.[1] | length)], .[1][:(.[0] | length)]] | transpose[]
| {instruction: $p.prompt, input: "", chosen: .[0].text, rejected: .[1].text, name: $p.name}

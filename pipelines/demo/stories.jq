# pipelines/demo/stories.jq: base-model samples -> SFT records (alpaca).
# In: `ftk generate` lines, slurped ($gen), and the prompts they answer ($seed, same order).
# The story is the opener and its continuation, cut after its last full sentence; it is kept
# when the name comes back in the continuation (the model kept to its character).
def uses($name): test("\\b" + $name + "\\b");
[$seed, $gen] | transpose[] | .[0] as $s | .[1] as $g
| ($s.prompt + " " + $g.text | sub("[^.!?\"]*$"; "")) as $story
| select(($g.text | sub("[^.!?\"]*$"; "") | uses($s.name)))
| {instruction: ("Write a story about " + $s.name + "."), input: "", output: $story, name: $s.name}

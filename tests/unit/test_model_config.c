/* tests/unit/test_model_config.c: config.json parsing for the four architectures (fixtures
 * written by transformers 5, tests/oracle/hf_tiny_models.py) and transformers 4 spellings, and
 * refusal of what would change the math. */
#include <string.h>
#include "check.h"
#include "ftk/model_config.h"

static ftk_status parse(const char *json, struct ftk_model_config *c)
{
    return ftk_model_config_parse(json, strlen(json), "config.json", c);
}

static ftk_status load(const char *arch, struct ftk_model_config *c)
{
    char p[256];
    snprintf(p, sizeof p, "tests/fixtures/hf_tiny/%s", arch);
    struct ftk_source *s;
    FTK_TRY(ftk_source_open(p, &s));
    ftk_status st = ftk_model_config_load(s, c);
    ftk_source_close(s);
    return st;
}

/* Mistral and Qwen default num_key_value_heads to 8 and 32, so their configs here name it. */
#define KV ",\"num_key_value_heads\":2"
#define BASE "\"vocab_size\":64,\"hidden_size\":16,\"intermediate_size\":24,\"num_hidden_layers\":2,\"num_attention_heads\":4"

int main(void)
{
    struct ftk_model_config c;
    TEST("llama fixture: llama3 rope from rope_parameters, untied") {
        CHECK_OK(load("llama", &c));
        CHECK_INT(c.arch, FTK_ARCH_LLAMA);
        CHECK_INT(c.V, 64); CHECK_INT(c.C, 16); CHECK_INT(c.F, 24); CHECK_INT(c.L, 2);
        CHECK_INT(c.H, 4); CHECK_INT(c.Hkv, 2); CHECK_INT(c.D, 4);
        CHECK_INT(c.rope.type, FTK_ROPE_LLAMA3);
        CHECK_NEAR(c.rope.theta, 500000.0, 0);
        CHECK_NEAR(c.rope.factor, 8.0, 0);
        CHECK_INT(c.rope.original_max_position_embeddings, 16);
        CHECK_INT(c.tie_word_embeddings, 0);
        CHECK_INT(c.qkv_bias, 0);
        CHECK_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
        CHECK_INT(c.n_eos, 1); CHECK_INT(c.eos_token_ids[0], 2);
        CHECK_STR(c.torch_dtype, "float32");
    }
    TEST("mistral fixture: tied, default rope") {
        CHECK_OK(load("mistral", &c));
        CHECK_INT(c.arch, FTK_ARCH_MISTRAL);
        CHECK_INT(c.tie_word_embeddings, 1);
        CHECK_INT(c.rope.type, FTK_ROPE_DEFAULT);
        CHECK_INT(c.sliding_window, 0);
    }
    TEST("qwen2 fixture: qkv bias, linear rope") {
        CHECK_OK(load("qwen2", &c));
        CHECK_INT(c.qkv_bias, 1); CHECK_INT(c.o_bias, 0);
        CHECK_INT(c.rope.type, FTK_ROPE_LINEAR);
        CHECK_NEAR(c.rope.factor, 2.0, 0);
    }
    TEST("qwen3 fixture: q/k norm, explicit head_dim") {
        CHECK_OK(load("qwen3", &c));
        CHECK_INT(c.qk_norm, 1); CHECK_INT(c.D, 8); CHECK_INT(c.qkv_bias, 0);
        CHECK_INT(ftk_model_config_n_params(&c), 64 * 16 + 2 * (16 * 32 + 2 * 16 * 16 + 32 * 16 + 2 * 8 + 3 * 16 * 24 + 2 * 16) + 16);
    }
    TEST("transformers 4 spelling: rope_theta + rope_scaling {type}, eos list, defaults") {
        CHECK_OK(parse("{\"model_type\":\"llama\"," BASE ",\"rope_theta\":1e6,\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":2.0},"
                       "\"eos_token_id\":[128001,128009],\"torch_dtype\":\"bfloat16\"}", &c));
        CHECK_INT(c.Hkv, 4); CHECK_INT(c.D, 4);
        CHECK_INT(c.rope.type, FTK_ROPE_DYNAMIC); CHECK_NEAR(c.rope.theta, 1e6, 0);
        CHECK_INT(c.n_eos, 2); CHECK_INT(c.eos_token_ids[1], 128009);
        CHECK_STR(c.torch_dtype, "bfloat16");
        CHECK_INT(c.bos_token_id, -1);
    }
    TEST("llama attention_bias and mlp_bias; mistral sliding window kept") {
        CHECK_OK(parse("{\"model_type\":\"llama\"," BASE ",\"attention_bias\":true,\"mlp_bias\":true}", &c));
        CHECK_INT(c.qkv_bias, 1); CHECK_INT(c.o_bias, 1); CHECK_INT(c.mlp_bias, 1);
        CHECK_OK(parse("{\"model_type\":\"mistral\"," BASE KV ",\"sliding_window\":4096}", &c));
        CHECK_INT(c.sliding_window, 4096);
        CHECK_OK(parse("{\"model_type\":\"qwen2\"," BASE KV ",\"sliding_window\":4096,\"use_sliding_window\":false}", &c));
        CHECK_INT(c.sliding_window, 0);
    }
    TEST("qwen3 defaults when absent, as Qwen3Config: head_dim 128, untied") {
        CHECK_OK(parse("{\"model_type\":\"qwen3\"," BASE KV "}", &c));
        CHECK_INT(c.D, 128); CHECK_INT(c.rope.head_dim, 128);
        CHECK_INT(c.tie_word_embeddings, 0);
        CHECK_OK(parse("{\"model_type\":\"qwen2\"," BASE KV "}", &c));
        CHECK_INT(c.D, 4); CHECK_INT(c.tie_word_embeddings, 0);
    }
    TEST("max_position_embeddings when absent, per config class (dynamic rope scales from it)") {
        CHECK_OK(parse("{\"model_type\":\"llama\"," BASE "}", &c));
        CHECK_INT(c.max_position_embeddings, 2048);
        CHECK_OK(parse("{\"model_type\":\"mistral\"," BASE KV ",\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":2}}", &c));
        CHECK_INT(c.max_position_embeddings, 131072); CHECK_INT(c.rope.max_position_embeddings, 131072);
        CHECK_OK(parse("{\"model_type\":\"qwen2\"," BASE KV "}", &c));
        CHECK_INT(c.max_position_embeddings, 32768);
        CHECK_OK(parse("{\"model_type\":\"qwen3\"," BASE KV "}", &c));
        CHECK_INT(c.max_position_embeddings, 32768);
    }
    TEST("llama3 rope without original_max_position_embeddings takes max_position_embeddings") {
        CHECK_OK(parse("{\"model_type\":\"llama\"," BASE ",\"max_position_embeddings\":4096,\"rope_scaling\":{\"rope_type\":\"llama3\","
                       "\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0}}", &c));
        CHECK_INT(c.rope.original_max_position_embeddings, 4096);
    }
    TEST("partial_rotary_factor: default rope rotates all of head_dim; scaled rope refuses it") {
        float inv[64], sc;
        int64_t R;
        CHECK_OK(parse("{\"model_type\":\"llama\"," BASE ",\"head_dim\":8,\"partial_rotary_factor\":0.5}", &c));
        CHECK_OK(ftk_rope_inv_freq(&c.rope, 1, inv, &R, &sc));
        CHECK_INT(R, 8);
        CHECK_OK(parse("{\"model_type\":\"qwen3\"," BASE ",\"num_key_value_heads\":2,\"head_dim\":8,"
                       "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1e6,\"partial_rotary_factor\":0.5}}", &c));
        CHECK_OK(ftk_rope_inv_freq(&c.rope, 1, inv, &R, &sc));
        CHECK_INT(R, 8);
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"partial_rotary_factor\":0.5,"
                        "\"rope_scaling\":{\"type\":\"linear\",\"factor\":2}}", &c), FTK_E_UNSUPPORTED, "partial_rotary_factor");
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"rope_parameters\":{\"rope_type\":\"dynamic\",\"factor\":2,"
                        "\"partial_rotary_factor\":0.5}}", &c), FTK_E_UNSUPPORTED, "partial_rotary_factor");
    }
    TEST("num_key_value_heads when absent: mistral 8, qwen2/qwen3 32; null: num_attention_heads") {
#define WIDE "\"vocab_size\":64,\"hidden_size\":512,\"intermediate_size\":24,\"num_hidden_layers\":2,\"num_attention_heads\":32"
        CHECK_OK(parse("{\"model_type\":\"llama\"," WIDE "}", &c));
        CHECK_INT(c.Hkv, 32);
        CHECK_OK(parse("{\"model_type\":\"mistral\"," WIDE "}", &c));
        CHECK_INT(c.Hkv, 8);
        CHECK_ERR(parse("{\"model_type\":\"qwen2\"," BASE "}", &c), FTK_E_FORMAT, "num_key_value_heads 32");
        CHECK_ERR(parse("{\"model_type\":\"qwen3\"," BASE "}", &c), FTK_E_FORMAT, "num_key_value_heads 32");
        CHECK_OK(parse("{\"model_type\":\"qwen3\"," BASE ",\"num_key_value_heads\":null}", &c));
        CHECK_INT(c.Hkv, 4);
#undef WIDE
    }
    TEST("sliding_window when absent is 4096 (mistral; qwen with use_sliding_window); null is none") {
        CHECK_OK(parse("{\"model_type\":\"mistral\"," BASE KV "}", &c));
        CHECK_INT(c.sliding_window, 4096);
        CHECK_OK(parse("{\"model_type\":\"mistral\"," BASE KV ",\"sliding_window\":null}", &c));
        CHECK_INT(c.sliding_window, 0);
        CHECK_OK(parse("{\"model_type\":\"qwen2\"," BASE KV ",\"use_sliding_window\":true}", &c));
        CHECK_INT(c.sliding_window, 4096);
        CHECK_OK(parse("{\"model_type\":\"qwen3\"," BASE KV ",\"use_sliding_window\":true,\"sliding_window\":null}", &c));
        CHECK_INT(c.sliding_window, 0);
        CHECK_OK(parse("{\"model_type\":\"qwen3\"," BASE KV "}", &c));
        CHECK_INT(c.sliding_window, 0);
    }
    TEST("dtype wins over torch_dtype when both are there, as PreTrainedConfig") {
        CHECK_OK(parse("{\"model_type\":\"llama\"," BASE ",\"torch_dtype\":\"float16\",\"dtype\":\"bfloat16\"}", &c));
        CHECK_STR(c.torch_dtype, "bfloat16");
        CHECK_OK(parse("{\"model_type\":\"llama\"," BASE ",\"torch_dtype\":\"float16\",\"dtype\":null}", &c));
        CHECK_STR(c.torch_dtype, "float16");
    }
    TEST("rope_scaling, when not empty, wins over rope_parameters; its rope_theta over the top-level one") {
        CHECK_OK(parse("{\"model_type\":\"llama\"," BASE ",\"rope_theta\":99,\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":2,"
                       "\"rope_theta\":1234}}", &c));
        CHECK_INT(c.rope.type, FTK_ROPE_LINEAR); CHECK_NEAR(c.rope.theta, 1234, 0);
        CHECK_OK(parse("{\"model_type\":\"llama\"," BASE ",\"rope_theta\":99,\"rope_parameters\":{\"rope_type\":\"default\","
                       "\"rope_theta\":5},\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":2}}", &c));
        CHECK_INT(c.rope.type, FTK_ROPE_LINEAR); CHECK_NEAR(c.rope.factor, 2, 0); CHECK_NEAR(c.rope.theta, 99, 0);
        CHECK_OK(parse("{\"model_type\":\"llama\"," BASE ",\"rope_theta\":99,\"rope_parameters\":{\"rope_type\":\"linear\","
                       "\"factor\":3,\"rope_theta\":5},\"rope_scaling\":{}}", &c));
        CHECK_INT(c.rope.type, FTK_ROPE_LINEAR); CHECK_NEAR(c.rope.factor, 3, 0); CHECK_NEAR(c.rope.theta, 5, 0);
    }
    TEST("mlp_bias is Llama's only: mistral, qwen2 and qwen3 MLPs have no bias whatever it says") {
        CHECK_OK(parse("{\"model_type\":\"qwen2\"," BASE KV ",\"mlp_bias\":true}", &c));
        CHECK_INT(c.mlp_bias, 0);
        CHECK_OK(parse("{\"model_type\":\"qwen3\"," BASE KV ",\"mlp_bias\":true}", &c));
        CHECK_INT(c.mlp_bias, 0);
        CHECK_OK(parse("{\"model_type\":\"mistral\"," BASE KV ",\"mlp_bias\":true}", &c));
        CHECK_INT(c.mlp_bias, 0);
    }
    TEST("refused: a scaled rope without the keys transformers requires (it fails with KeyError)") {
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"rope_scaling\":{\"rope_type\":\"linear\"}}", &c),
                  FTK_E_FORMAT, "\"factor\" missing");
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"rope_parameters\":{\"rope_type\":\"dynamic\"}}", &c),
                  FTK_E_FORMAT, "\"factor\" missing");
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,"
                        "\"high_freq_factor\":4}}", &c), FTK_E_FORMAT, "\"low_freq_factor\" missing");
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,"
                        "\"low_freq_factor\":1}}", &c), FTK_E_FORMAT, "\"high_freq_factor\" missing");
    }
    TEST("refused: rope_parameters nested by layer type (the four models read only a flat dict)") {
        CHECK_ERR(parse("{\"model_type\":\"qwen3\"," BASE KV ",\"layer_types\":[\"full_attention\",\"full_attention\"],"
                        "\"rope_parameters\":{\"full_attention\":{\"rope_type\":\"default\",\"rope_theta\":1e6}}}", &c),
                  FTK_E_UNSUPPORTED, "\"full_attention\"");
    }
    TEST("refused: what would change the math, and malformed values") {
        CHECK_ERR(parse("{\"model_type\":\"gpt2\"," BASE "}", &c), FTK_E_UNSUPPORTED, "model_type \"gpt2\"");
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"hidden_act\":\"gelu\"}", &c), FTK_E_UNSUPPORTED, "hidden_act \"gelu\"");
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", &c),
                  FTK_E_UNSUPPORTED, "rope type \"yarn\"");
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"attention_dropout\":0.1}", &c), FTK_E_UNSUPPORTED, "attention_dropout");
        CHECK_ERR(parse("{\"model_type\":\"qwen2\"," BASE KV ",\"layer_types\":[\"sliding_attention\"]}", &c), FTK_E_UNSUPPORTED, "layer_types");
        CHECK_ERR(parse("{\"model_type\":\"llama\",\"vocab_size\":64}", &c), FTK_E_FORMAT, "\"hidden_size\" missing");
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"num_key_value_heads\":3}", &c), FTK_E_FORMAT, "not a multiple");
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"rms_norm_eps\":\"x\"}", &c), FTK_E_FORMAT, "rms_norm_eps");
        CHECK_ERR(parse("{\"model_type\":\"llama\"," BASE ",\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":0}}", &c),
                  FTK_E_FORMAT, "rope factor");
        CHECK_ERR(parse("{not json", &c), FTK_E_FORMAT, "config.json: not valid JSON");
    }
    return check_summary();
}

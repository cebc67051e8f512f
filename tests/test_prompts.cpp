// The prompts file (worker/prompts.h): every malformed line is refused with the file, the line
// and what is wrong; a good file reads back as written.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "process.h"
#include "text/prompts.h"

namespace {

std::string write_prompts(const std::string& dir, const std::string& text) {
    std::string path = dir + "/prompts.jsonl";
    std::ofstream(path, std::ios::trunc) << text;
    return path;
}

}  // namespace

TEST(Prompts, AGoodFileReadsBackAsWritten) {
    std::string dir = tpx_test::temp_dir();
    std::string path = write_prompts(dir, "{\"id\": \"a\", \"input_ids\": [1, 2, 3]}\n\n{\"id\": 7, \"input_ids\": [4]}\n{\"input_ids\": [5, 6]}\n"
                                          "{\"id\": 18446744073709551615, \"input_ids\": [1]}\n");
    auto prompts = tpx::read_prompts(path, 10, 4, 16);
    ASSERT_EQ(prompts.size(), 4u);
    EXPECT_EQ(prompts[3].id, "18446744073709551615") << "an id past 2^63 as written, not wrapped";
    EXPECT_EQ(prompts[0].id, "a");
    EXPECT_FALSE(prompts[0].id_is_number);
    EXPECT_EQ(prompts[0].tokens, (std::vector<int32_t>{1, 2, 3}));
    EXPECT_EQ(prompts[1].id, "7");
    EXPECT_TRUE(prompts[1].id_is_number);
    EXPECT_EQ(prompts[2].id, "2") << "no id: its place among the prompts";
    EXPECT_EQ(tpx::unpack_prompts(tpx::pack_prompts(prompts))[2].tokens, (std::vector<int32_t>{5, 6}));
    std::filesystem::remove_all(dir);
}

TEST(Prompts, EachMalformedLineIsNamed) {
    std::string dir = tpx_test::temp_dir();
    const std::string ok = "{\"id\": \"p\", \"input_ids\": [1]}\n";
    struct {
        std::string text, message;
    } cases[] = {
        {"not json\n", ":1: not valid JSON: parse error at line 1, column 2"},  // without nlohmann's "[json.exception...]" tag
        {"[1, 2]\n", ":1: expected a JSON object"},
        {"{\"id\": 1}\n", ":1: no prompt: give one of input_ids, text, messages"},
        {ok + "{\"id\": \"q\", \"input_ids\": [1], \"text\": \"hello\"}\n", ":2: give only one of input_ids, text, messages"},
        {ok + "{\"id\": \"q\", \"prompt\": \"hello\"}\n", ":2: unknown key 'prompt'; valid keys: id, and one of input_ids, text, messages"},
        {"{\"id\": \"t\", \"text\": \"hello\"}\n", ":1: prompt t: a \"text\" prompt needs a tokenizer"},
        {"{\"id\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n", ":1: prompt m: a \"messages\" prompt needs a tokenizer"},
        {"{\"id\": {\"a\": 1}, \"input_ids\": [1]}\n", ":1: id {\"a\":1} is not a string or an integer"},
        {"{\"id\": 1.5, \"input_ids\": [1]}\n", ":1: id 1.5 is not a string or an integer"},
        {ok + "\n" + ok, ":3: prompt id p is also the id on line 1"},
        {"{\"id\": 3, \"input_ids\": [1]}\n{\"id\": \"3\", \"input_ids\": [1]}\n", ":2: prompt id 3 is also the id on line 1"},
        {"{\"id\": \"p\", \"input_ids\": [1, 2.5]}\n", ":1: prompt p: input_ids[1] = 2.5 is not a token id"},
        {"{\"id\": \"p\", \"input_ids\": [1, 18446744073709551615]}\n", ":1: prompt p: input_ids[1] = 18446744073709551615 is not a token id"},
        {"{\"id\": \"p\", \"input_ids\": [1, -2]}\n", ":1: prompt p: token id -2 at position 1 is outside the model's vocabulary [0, 10)"},
        {"{\"id\": \"p\", \"input_ids\": []}\n", ":1: prompt p has no tokens"},
        {"{\"id\": \"p\", \"input_ids\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4]}\n",
         ":1: prompt p: 13 tokens + max_new_tokens 4 exceed max_seq_len 16"},
        {"\n \n", ": no prompts"},
        {std::string("{\"id\": \"p\", \"input_ids\": [1]}\0{garbage\n", 38), ":1: holds a NUL byte"},  // nlohmann stops at the NUL
    };
    for (const auto& c : cases) {
        std::string path = write_prompts(dir, c.text);
        try {
            tpx::read_prompts(path, 10, 4, 16);
            ADD_FAILURE() << "accepted: " << c.text;
        } catch (const tpx::Error& e) {
            EXPECT_NE(std::string(e.what()).find(path + c.message), std::string::npos) << e.what();
            EXPECT_EQ(e.exit_code(), tpx::kExitBadInput);
        }
    }
    std::filesystem::remove_all(dir);
}

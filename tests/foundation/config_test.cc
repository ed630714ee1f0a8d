#include "cityos/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace cityos {
namespace {

using ::testing::HasSubstr;

ConfigNode Load(const char* yaml) {
  auto c = ConfigNode::LoadString(yaml, "test.yaml");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

TEST(ConfigNode, ReadsScalarsWithDefaults) {
  ConfigNode c = Load(R"(
a: hello
n: 42
d: 1.5
b: yes
t: 250ms
sz: 64MiB
list: [x, y]
)");
  EXPECT_EQ(*c.GetString("a"), "hello");
  EXPECT_EQ(*c.GetInt("n"), 42);
  EXPECT_DOUBLE_EQ(*c.GetDouble("d"), 1.5);
  EXPECT_TRUE(*c.GetBool("b"));
  EXPECT_EQ(*c.GetDuration("t"), absl::Milliseconds(250));
  EXPECT_EQ(*c.GetBytes("sz"), 64u << 20);
  EXPECT_EQ(*c.GetStringList("list"), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(*c.GetString("absent", "dflt"), "dflt");
  EXPECT_EQ(*c.GetInt("absent", 7), 7);
  EXPECT_TRUE(c.ChildOrEmpty("absent")->IsMap());
}

TEST(ConfigNode, MissingKeyNamesFileLineAndPath) {
  ConfigNode c = Load("node:\n  name: x\n");
  auto node = c.Child("node");
  ASSERT_TRUE(node.ok());
  auto s = node->GetString("listen");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("test.yaml:2:3: node.listen: required key is missing"));
}

TEST(ConfigNode, WrongTypeNamesLineAndValue) {
  ConfigNode c = Load("node:\n  port: abc\n  m: {x: 1}\n");
  auto node = *c.Child("node");
  auto port = node.GetInt("port");
  ASSERT_FALSE(port.ok());
  EXPECT_THAT(port.status().message(),
              HasSubstr("test.yaml:2:9: node.port: expected an integer, got \"abc\""));
  auto m = node.GetString("m");
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("node.m: expected a string, got a map"));
  auto d = node.GetDuration("port");
  EXPECT_THAT(d.status().message(), HasSubstr("expected a duration"));
  EXPECT_THAT(node.GetBool("port").status().message(), HasSubstr("expected true or false"));
  EXPECT_THAT(node.GetBytes("port").status().message(), HasSubstr("byte size"));
}

TEST(ConfigNode, UnknownKeyIsRejectedWithItsPosition) {
  ConfigNode c = Load("node:\n  name: x\n  lisen: y\n");
  auto s = c.Child("node")->CheckKeys({"name", "listen"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("test.yaml:3:3: node.lisen: unknown key"));
}

TEST(ConfigNode, SequenceElementsCarryIndexedPaths) {
  ConfigNode c = Load("plugins:\n  - name: a\n  - name: 5\n    config: [1]\n");
  auto els = c.Elements("plugins");
  ASSERT_TRUE(els.ok());
  ASSERT_EQ(els->size(), 2u);
  auto cfg = (*els)[1].Child("config");
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(cfg.status().message(),
              HasSubstr("test.yaml:4:13: plugins[1].config: expected a map, got a list"));
}

TEST(ConfigNode, SyntaxErrorNamesPosition) {
  auto c = ConfigNode::LoadString("a: [1, 2\nb: 3\n", "bad.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("bad.yaml:"));
  EXPECT_THAT(c.status().message(), HasSubstr("YAML syntax error"));
}

TEST(ConfigNode, TopLevelMustBeAMap) {
  auto c = ConfigNode::LoadString("- a\n- b\n", "list.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("expected a map at the top level"));
}

TEST(ConfigNode, MissingFileIsNotFound) {
  auto c = ConfigNode::LoadFile("/nonexistent/cityos.yaml");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace cityos

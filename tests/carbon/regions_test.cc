// Tests of the carbon account's region tree (services/carbon/regions.h):
// validation, coverage, ancestry, factor regions, children, subject suffixes.
#include "regions.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace cityos::carbon {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::vector<RegionInfo> Quzhou() {
  return {
      {"CN", "China", "", "", "cn"},
      {"CN-ZJ", "Zhejiang", "CN", "CN-EAST", "zhejiang"},
      {"CN-ZJ-QZ", "Quzhou", "CN-ZJ", "", "quzhou"},
      {"CN-ZJ-QZ-KC", "Kecheng", "CN-ZJ-QZ", "", "kecheng"},
      {"CN-ZJ-QZ-QJ", "Qujiang", "CN-ZJ-QZ", "", "qujiang"},
      {"CN-ZJ-QZ-KC-T1", "A town", "CN-ZJ-QZ-KC", "", ""},
      {"CN-GD", "Guangdong", "CN", "CN-SOUTH", "guangdong"},
      {"CN-BJ", "Beijing", "CN", "", "beijing"},
      {"JP", "Japan", "", "", "jp"},
  };
}

RegionTree Tree() {
  absl::StatusOr<RegionTree> t = RegionTree::Create(Quzhou());
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

TEST(RegionTree, FactorRegionsExampleFromTheBrief) {
  RegionTree t = Tree();
  EXPECT_THAT(t.FactorRegions("CN-ZJ-QZ-KC"),
              ElementsAre("CN-ZJ-QZ-KC", "CN-ZJ-QZ", "CN-ZJ", "CN-EAST", "CN", "IPCC"));
  EXPECT_THAT(t.FactorRegions("CN-ZJ-QZ-KC-T1"),
              ElementsAre("CN-ZJ-QZ-KC-T1", "CN-ZJ-QZ-KC", "CN-ZJ-QZ", "CN-ZJ", "CN-EAST", "CN", "IPCC"));
  EXPECT_THAT(t.FactorRegions("CN-ZJ"), ElementsAre("CN-ZJ", "CN-EAST", "CN", "IPCC"));
  EXPECT_THAT(t.FactorRegions("CN-BJ"), ElementsAre("CN-BJ", "CN", "IPCC"));
  EXPECT_THAT(t.FactorRegions("CN"), ElementsAre("CN", "IPCC"));
  EXPECT_THAT(t.FactorRegions("JP"), ElementsAre("JP", "IPCC"));
  // Unknown codes still end with the defaults.
  EXPECT_THAT(t.FactorRegions("XX-1"), ElementsAre("XX-1", "IPCC"));
  EXPECT_EQ(t.FactorRegionsOf("XX-1"), nullptr);
  ASSERT_NE(t.FactorRegionsOf("CN-GD"), nullptr);
  EXPECT_THAT(*t.FactorRegionsOf("CN-GD"), ElementsAre("CN-GD", "CN-SOUTH", "CN", "IPCC"));
}

TEST(RegionTree, NearestGridWins) {
  std::vector<RegionInfo> r = Quzhou();
  r[2].grid = "CN-QZ-GRID";  // the city names its own grid
  absl::StatusOr<RegionTree> t = RegionTree::Create(r);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->FactorRegions("CN-ZJ-QZ-KC"),
              ElementsAre("CN-ZJ-QZ-KC", "CN-ZJ-QZ", "CN-ZJ", "CN-QZ-GRID", "CN", "IPCC"));
  EXPECT_THAT(t->FactorRegions("CN-ZJ"), ElementsAre("CN-ZJ", "CN-EAST", "CN", "IPCC"));
}

TEST(RegionTree, CoversAncestryDepth) {
  RegionTree t = Tree();
  EXPECT_TRUE(t.Covers("CN", "CN-ZJ-QZ-KC"));
  EXPECT_TRUE(t.Covers("CN-ZJ-QZ", "CN-ZJ-QZ-KC"));
  EXPECT_TRUE(t.Covers("CN-ZJ-QZ-KC", "CN-ZJ-QZ-KC"));
  EXPECT_FALSE(t.Covers("CN-ZJ-QZ-KC", "CN-ZJ-QZ"));
  EXPECT_FALSE(t.Covers("CN-ZJ-QZ-QJ", "CN-ZJ-QZ-KC"));
  EXPECT_FALSE(t.Covers("CN-GD", "CN-ZJ-QZ-KC"));
  EXPECT_FALSE(t.Covers("JP", "CN-ZJ"));
  EXPECT_FALSE(t.Covers("CN", "XX"));
  EXPECT_FALSE(t.Covers("CN-EAST", "CN-ZJ"));  // a grid region is not an ancestor
  EXPECT_THAT(t.Ancestry("CN-ZJ-QZ-KC"), ElementsAre("CN-ZJ-QZ-KC", "CN-ZJ-QZ", "CN-ZJ", "CN"));
  EXPECT_THAT(t.Ancestry("XX"), ElementsAre("XX"));
  EXPECT_EQ(t.Depth("CN"), 0);
  EXPECT_EQ(t.Depth("CN-ZJ-QZ-KC"), 3);
  EXPECT_EQ(t.Depth("XX"), -1);
  ASSERT_NE(t.Find("CN-ZJ-QZ"), nullptr);
  EXPECT_EQ(t.Find("CN-ZJ-QZ")->name, "Quzhou");
  EXPECT_EQ(t.Find("CN-ZJ-QZ-KC-T1")->subject_token, "t1");  // default token
  EXPECT_EQ(t.Find("cn"), nullptr);
  EXPECT_EQ(t.all().size(), 9u);
}

TEST(RegionTree, ChildrenSorted) {
  RegionTree t = Tree();
  EXPECT_THAT(t.Children("CN"), ElementsAre("CN-BJ", "CN-GD", "CN-ZJ"));
  EXPECT_THAT(t.Children("CN-ZJ-QZ"), ElementsAre("CN-ZJ-QZ-KC", "CN-ZJ-QZ-QJ"));
  EXPECT_THAT(t.Children("CN-ZJ-QZ-QJ"), IsEmpty());
  EXPECT_THAT(t.Children("XX"), IsEmpty());
}

TEST(RegionTree, SubjectSuffix) {
  RegionTree t = Tree();
  EXPECT_EQ(t.SubjectSuffix("CN-ZJ-QZ-KC"), "quzhou.kecheng");
  EXPECT_EQ(t.SubjectSuffix("CN-ZJ-QZ-QJ"), "quzhou.qujiang");
  EXPECT_EQ(t.SubjectSuffix("CN-ZJ-QZ-KC-T1"), "quzhou.kecheng");  // a town publishes as its district
  EXPECT_EQ(t.SubjectSuffix("CN-ZJ-QZ"), "quzhou.all");
  EXPECT_EQ(t.SubjectSuffix("CN-ZJ"), "zhejiang.all");
  EXPECT_EQ(t.SubjectSuffix("CN"), "cn.all");
  EXPECT_EQ(t.SubjectSuffix("XX"), "");
}

TEST(RegionTree, UnknownParent) {
  std::vector<RegionInfo> r = Quzhou();
  r.push_back({"CN-ZJ-HZ-XH", "Xihu", "CN-ZJ-HZ", "", ""});
  absl::StatusOr<RegionTree> t = RegionTree::Create(r);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("CN-ZJ-HZ-XH"));
  EXPECT_THAT(t.status().message(), HasSubstr("unknown parent 'CN-ZJ-HZ'"));
}

TEST(RegionTree, Cycle) {
  absl::StatusOr<RegionTree> t = RegionTree::Create({
      {"CN", "China", "", "", ""},
      {"CN-A", "A", "CN-B", "", ""},
      {"CN-B", "B", "CN-A", "", ""},
  });
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("cycle"));
  EXPECT_THAT(t.status().message(), HasSubstr("CN-A"));

  absl::StatusOr<RegionTree> self = RegionTree::Create({{"CN", "China", "CN", "", ""}});
  ASSERT_FALSE(self.ok());
  EXPECT_THAT(self.status().message(), HasSubstr("cycle"));

  // A node hanging below a cycle is reported too.
  absl::StatusOr<RegionTree> below = RegionTree::Create({
      {"CN-C", "C", "CN-A", "", ""},
      {"CN-A", "A", "CN-B", "", ""},
      {"CN-B", "B", "CN-A", "", ""},
  });
  ASSERT_FALSE(below.ok());
  EXPECT_THAT(below.status().message(), HasSubstr("cycle"));
}

TEST(RegionTree, Duplicate) {
  std::vector<RegionInfo> r = Quzhou();
  r.push_back({"CN-ZJ-QZ", "Quzhou again", "CN-ZJ", "", ""});
  absl::StatusOr<RegionTree> t = RegionTree::Create(r);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("CN-ZJ-QZ: duplicate code"));
}

TEST(RegionTree, BadCodesGridsAndTokens) {
  for (const char* code : {"", "cn", "C", "CN-", "CN--ZJ", "CN ZJ", "1N", "CN.ZJ"}) {
    absl::StatusOr<RegionTree> t = RegionTree::Create({{code, "x", "", "", ""}});
    ASSERT_FALSE(t.ok()) << code;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr(absl::StrCat("'", code, "'")));
  }
  absl::StatusOr<RegionTree> grid = RegionTree::Create({{"CN", "China", "", "east", ""}});
  ASSERT_FALSE(grid.ok());
  EXPECT_THAT(grid.status().message(), HasSubstr("bad grid 'east'"));
  absl::StatusOr<RegionTree> token = RegionTree::Create({{"CN", "China", "", "", "cn.all"}});
  ASSERT_FALSE(token.ok());
  EXPECT_THAT(token.status().message(), HasSubstr("bad subject token 'cn.all'"));
  absl::StatusOr<RegionTree> wild = RegionTree::Create({{"CN", "China", "", "", ">"}});
  EXPECT_FALSE(wild.ok());
}

TEST(RegionTree, EmptyTreeTreatsEverythingAsUnknown) {
  absl::StatusOr<RegionTree> t = RegionTree::Create({});
  ASSERT_TRUE(t.ok());
  EXPECT_THAT(t->FactorRegions("CN"), ElementsAre("CN", "IPCC"));
  EXPECT_TRUE(t->Covers("CN", "CN"));
  EXPECT_FALSE(t->Covers("CN", "CN-ZJ"));
}

}  // namespace
}  // namespace cityos::carbon

// Tests of carbon-efficiency grades (services/carbon/grades.h): K rounding and
// level boundaries, colours and their median, explanation, thresholds,
// validation, the benchmark table.
#include "grades.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/time/time.h"

namespace cityos::carbon {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

Benchmark Steel() { return {"zj-2023-C31", "C31", "2023", "Zhejiang 2023 industry averages", 0.92}; }

GradeInput Input(double emissions_kg, double value_added) {
  GradeInput in;
  in.account_id = "quzhou-steel";
  in.period = {absl::FromUnixSeconds(1672502400), absl::FromUnixSeconds(1704038400)};
  in.emissions_kg = emissions_kg;
  in.value_added_10k_yuan = value_added;
  return in;
}

TEST(Grades, LevelBoundaries) {
  const std::pair<double, int> cases[] = {
      {0.0, 1},  {0.6, 1},  {0.60004, 1}, {0.60005, 2}, {0.61, 2}, {0.8, 2}, {0.80005, 3},
      {1.2, 3},  {1.21, 4}, {2.0, 4},     {2.00004, 4}, {2.01, 5}, {9.9, 5},
  };
  for (const auto& [k, level] : cases) EXPECT_EQ(LevelForK(k), level) << k;
  EXPECT_EQ(LevelForK(0.55, std::vector<double>{0.5, 0.9, 1.3, 2.2}), 2);
}

TEST(Grades, RoundKHalfAwayFromZero) {
  EXPECT_EQ(RoundK(0.80435), 0.8044);
  EXPECT_EQ(RoundK(0.804349), 0.8043);
  EXPECT_EQ(RoundK(-0.80435), -0.8044);
  EXPECT_EQ(RoundK(0.6000000000000001), 0.6);
  EXPECT_EQ(RoundK(0.7999999999999999), 0.8);
  EXPECT_EQ(RoundK(1.23456), 1.2346);
  EXPECT_EQ(RoundK(0.74 / 0.92), 0.8043);
}

TEST(Grades, KProducedByDivision) {
  struct Case {
    double emissions_kg, value_added, benchmark;
    int level;
  };
  // Each K lands on a boundary only after rounding (e.g. 0.648 / 9 / 0.12 =
  // 0.6000000000000001 in binary).
  const Case cases[] = {
      {552000, 1000, 0.92, 1},  // 0.552 / 0.92 = 0.6
      {648, 9, 0.12, 1},        // 0.6000000000000001
      {736000, 1000, 0.92, 2},  // 0.7999999999999999
      {280, 1, 0.35, 2},        // 0.8000000000000002
      {540, 3, 0.15, 3},        // 1.2000000000000002
      {1104000, 1000, 0.92, 3}, // 1.2
      {1840000, 1000, 0.92, 4}, // 2.0
      {1849200, 1000, 0.92, 5}, // 2.01
  };
  for (const Case& c : cases) {
    Benchmark b = Steel();
    b.intensity = c.benchmark;
    absl::StatusOr<v1::Grade> g = ComputeGrade(Input(c.emissions_kg, c.value_added), b);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->level(), c.level) << c.emissions_kg << " / " << c.value_added << " / " << c.benchmark
                                   << " K=" << g->k();
  }
}

TEST(Grades, GradeFieldsAndExplanation) {
  absl::StatusOr<v1::Grade> g = ComputeGrade(Input(740000, 1000), Steel());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->account_id(), "quzhou-steel");
  EXPECT_EQ(g->level(), 3);
  EXPECT_EQ(g->colour(), v1::GRADE_COLOUR_YELLOW);
  EXPECT_EQ(g->k(), 0.8043);
  EXPECT_DOUBLE_EQ(g->intensity(), 0.74);
  EXPECT_EQ(g->emissions_kg(), 740000);
  EXPECT_EQ(g->value_added_10k_yuan(), 1000);
  EXPECT_EQ(g->benchmark(), 0.92);
  EXPECT_EQ(g->benchmark_id(), "zj-2023-C31");
  EXPECT_EQ(g->benchmark_version(), "2023");
  EXPECT_THAT(g->thresholds(), ElementsAre(0.6, 0.8, 1.2, 2.0));
  EXPECT_EQ(g->method(), "DB33/T 1347-2023");
  EXPECT_EQ(g->period().start().seconds(), 1672502400);
  EXPECT_EQ(g->period().end().seconds(), 1704038400);
  ASSERT_EQ(g->dimensions_size(), 1);
  EXPECT_EQ(g->dimensions(0).dimension(), v1::GRADE_DIMENSION_INDUSTRY);
  EXPECT_EQ(g->dimensions(0).reference(), 0.92);
  EXPECT_EQ(g->dimensions(0).reference_version(), "2023");
  EXPECT_EQ(g->dimensions(0).ratio(), 0.8043);
  EXPECT_EQ(g->dimensions(0).colour(), v1::GRADE_COLOUR_YELLOW);
  EXPECT_THAT(g->explanation(), HasSubstr("K = 0.7400 / 0.9200 = 0.8043 > 0.8, <= 1.2: level 3"));
  EXPECT_THAT(g->explanation(), HasSubstr("zj-2023-C31"));
  EXPECT_THAT(g->explanation(), HasSubstr("version 2023"));
  EXPECT_THAT(g->explanation(), HasSubstr("DB33/T 1347-2023"));

  absl::StatusOr<v1::Grade> best = ComputeGrade(Input(552000, 1000), Steel());
  EXPECT_THAT(best->explanation(), HasSubstr("= 0.6000 <= 0.6: level 1"));
  absl::StatusOr<v1::Grade> worst = ComputeGrade(Input(1849200, 1000), Steel());
  EXPECT_THAT(worst->explanation(), HasSubstr("= 2.0100 > 2.0: level 5"));
  EXPECT_EQ(worst->colour(), v1::GRADE_COLOUR_RED);
}

TEST(Grades, Colours) {
  EXPECT_EQ(ColourForRatio(0.6), v1::GRADE_COLOUR_DEEP_GREEN);
  EXPECT_EQ(ColourForRatio(0.61), v1::GRADE_COLOUR_LIGHT_GREEN);
  EXPECT_EQ(ColourForRatio(0.8), v1::GRADE_COLOUR_LIGHT_GREEN);
  EXPECT_EQ(ColourForRatio(1.2), v1::GRADE_COLOUR_YELLOW);
  EXPECT_EQ(ColourForRatio(1.21), v1::GRADE_COLOUR_RED);
  EXPECT_EQ(ColourForRatio(2.0), v1::GRADE_COLOUR_RED);
  EXPECT_EQ(ColourForRatio(2.01), v1::GRADE_COLOUR_RED);
  EXPECT_EQ(MedianColour({}), v1::GRADE_COLOUR_UNSPECIFIED);
  EXPECT_EQ(MedianColour({v1::GRADE_COLOUR_RED}), v1::GRADE_COLOUR_RED);
  EXPECT_EQ(MedianColour({v1::GRADE_COLOUR_RED, v1::GRADE_COLOUR_DEEP_GREEN, v1::GRADE_COLOUR_YELLOW}),
            v1::GRADE_COLOUR_YELLOW);
  EXPECT_EQ(MedianColour({v1::GRADE_COLOUR_DEEP_GREEN, v1::GRADE_COLOUR_LIGHT_GREEN}),
            v1::GRADE_COLOUR_LIGHT_GREEN);
}

TEST(Grades, OverallColourIsTheMedianOfDimensions) {
  GradeInput in = Input(740000, 1000);  // intensity 0.74, industry K 0.8043: yellow
  v1::DimensionScore region;
  region.set_reference(1.48);  // ratio 0.5: deep green
  region.set_reference_version("quzhou-2023");
  v1::DimensionScore history;
  history.set_reference(0.296);  // ratio 2.5: red
  history.set_reference_version("2022");
  in.region_reference = region;
  in.history_reference = history;
  absl::StatusOr<v1::Grade> g = ComputeGrade(in, Steel());
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->dimensions_size(), 3);
  EXPECT_EQ(g->dimensions(1).dimension(), v1::GRADE_DIMENSION_REGION);
  EXPECT_EQ(g->dimensions(1).ratio(), 0.5);
  EXPECT_EQ(g->dimensions(1).colour(), v1::GRADE_COLOUR_DEEP_GREEN);
  EXPECT_EQ(g->dimensions(1).reference_version(), "quzhou-2023");
  EXPECT_EQ(g->dimensions(2).dimension(), v1::GRADE_DIMENSION_HISTORY);
  EXPECT_EQ(g->dimensions(2).ratio(), 2.5);
  EXPECT_EQ(g->dimensions(2).colour(), v1::GRADE_COLOUR_RED);
  EXPECT_EQ(g->colour(), v1::GRADE_COLOUR_YELLOW);
  EXPECT_EQ(g->level(), 3);  // the level is the industry K's alone
  EXPECT_THAT(g->explanation(), HasSubstr("quzhou-2023"));

  // Region better, history better too: median deep green although industry is yellow.
  history.set_reference(1.0);  // 0.74: light green
  in.history_reference = history;
  region.set_reference(2.0);  // 0.37: deep green
  in.region_reference = region;
  EXPECT_EQ(ComputeGrade(in, Steel())->colour(), v1::GRADE_COLOUR_LIGHT_GREEN);
  // Two dimensions: the worse of the two.
  in.history_reference.reset();
  EXPECT_EQ(ComputeGrade(in, Steel())->colour(), v1::GRADE_COLOUR_YELLOW);
}

TEST(Grades, CustomThresholdsAreStored) {
  const std::vector<double> t = {0.5, 0.9, 1.3, 2.2};
  absl::StatusOr<v1::Grade> g = ComputeGrade(Input(740000, 1000), Steel(), t);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->level(), 2);
  EXPECT_THAT(g->thresholds(), ElementsAre(0.5, 0.9, 1.3, 2.2));
  EXPECT_THAT(g->explanation(), HasSubstr("> 0.5, <= 0.9: level 2"));
  for (const std::vector<double>& bad : std::vector<std::vector<double>>{
           {0.6, 0.8, 1.2}, {0.6, 0.6, 1.2, 2.0}, {0.8, 0.6, 1.2, 2.0}, {-1, 0.6, 1.2, 2.0}}) {
    absl::StatusOr<v1::Grade> r = ComputeGrade(Input(740000, 1000), Steel(), bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(Grades, InvalidInputs) {
  for (double va : {0.0, -5.0}) {
    absl::StatusOr<v1::Grade> g = ComputeGrade(Input(740000, va), Steel());
    ASSERT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << va;
    EXPECT_THAT(g.status().message(), HasSubstr("value added"));
    EXPECT_THAT(g.status().message(), HasSubstr("quzhou-steel"));
  }
  Benchmark zero = Steel();
  zero.intensity = 0;
  absl::StatusOr<v1::Grade> b = ComputeGrade(Input(740000, 1000), zero);
  ASSERT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("zj-2023-C31"));
  EXPECT_EQ(ComputeGrade(Input(-1, 1000), Steel()).status().code(), absl::StatusCode::kInvalidArgument);
  GradeInput in = Input(740000, 1000);
  v1::DimensionScore region;
  region.set_reference(0);
  in.region_reference = region;
  absl::StatusOr<v1::Grade> r = ComputeGrade(in, Steel());
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("GRADE_DIMENSION_REGION"));
}

TEST(BenchmarkTable, LongestPrefixWins) {
  absl::StatusOr<BenchmarkTable> t = BenchmarkTable::Create({
      {"default", "", "2023", "provincial average", 1.5},
      {"c31", "C31", "2023", "steel", 0.92},
      {"c3110", "C3110", "2023", "iron making", 1.8},
      {"c26", "C26", "2023", "chemicals", 0.7},
  });
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->Find("C3110")->id, "c3110");
  EXPECT_EQ(t->Find("C3120")->id, "c31");
  EXPECT_EQ(t->Find("C2611")->id, "c26");
  EXPECT_EQ(t->Find("A0111")->id, "default");
  EXPECT_EQ(t->Find("")->id, "default");
  EXPECT_EQ(t->all().size(), 4u);

  absl::StatusOr<BenchmarkTable> no_default = BenchmarkTable::Create({{"c31", "C31", "2023", "steel", 0.92}});
  ASSERT_TRUE(no_default.ok());
  EXPECT_EQ(no_default->Find("A0111"), nullptr);
}

TEST(BenchmarkTable, ErrorsNameTheEntry) {
  struct Case {
    std::vector<Benchmark> b;
    std::string want;
  };
  const Case cases[] = {
      {{{"", "C31", "2023", "s", 0.9}}, "benchmark #0: empty id"},
      {{{"c31", "C31", "", "s", 0.9}}, "benchmark c31: empty version"},
      {{{"c31", "C31", "2023", "s", 0}}, "benchmark c31: intensity 0"},
      {{{"c31", "C31", "2023", "s", -1}}, "benchmark c31: intensity -1"},
      {{{"c31", "C31", "2023", "s", 0.9}, {"c31", "C32", "2023", "s", 0.9}}, "benchmark c31: duplicate id"},
      {{{"a", "C31", "2023", "s", 0.9}, {"b", "C31", "2023", "s", 0.9}}, "benchmark b: industry prefix 'C31'"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<BenchmarkTable> t = BenchmarkTable::Create(c.b);
    ASSERT_FALSE(t.ok()) << c.want;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr(c.want));
  }
}

}  // namespace
}  // namespace cityos::carbon

#include "cityos/plugin.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cityos/config.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;

class NamedPlugin final : public ServicePlugin {
 public:
  explicit NamedPlugin(std::string name) : name_(std::move(name)) {}
  std::string_view name() const override { return name_; }
  absl::Status Configure(const ConfigNode&) override { return absl::OkStatus(); }
  absl::Status Start(PluginContext&) override { return absl::OkStatus(); }
  std::vector<HostedService> Services() override { return {}; }
  void Stop() override {}

 private:
  std::string name_;
};

TEST(PluginRegistry, CreatesRegisteredPluginsFreshEachTime) {
  PluginRegistry r;
  ASSERT_TRUE(r.Register("alpha", [] { return std::make_unique<NamedPlugin>("alpha"); }).ok());
  auto a = r.Create("alpha");
  auto b = r.Create("alpha");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->get(), b->get());
  EXPECT_EQ((*a)->name(), "alpha");
  EXPECT_TRUE(r.Contains("alpha"));
}

TEST(PluginRegistry, RefusesDuplicates) {
  PluginRegistry r;
  ASSERT_TRUE(r.Register("alpha", [] { return std::make_unique<NamedPlugin>("alpha"); }).ok());
  absl::Status s = r.Register("alpha", [] { return std::make_unique<NamedPlugin>("alpha"); });
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(s.message(), HasSubstr("\"alpha\" is already registered"));
}

TEST(PluginRegistry, RefusesBadNamesAndEmptyFactories) {
  PluginRegistry r;
  EXPECT_EQ(r.Register("", [] { return nullptr; }).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Register("Bad Name", [] { return nullptr; }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Register("ok", nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(PluginRegistry, UnknownNameListsKnownOnes) {
  PluginRegistry r;
  ASSERT_TRUE(r.Register("beta", [] { return std::make_unique<NamedPlugin>("beta"); }).ok());
  ASSERT_TRUE(r.Register("alpha", [] { return std::make_unique<NamedPlugin>("alpha"); }).ok());
  auto p = r.Create("gamma");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(p.status().message(), HasSubstr("known: alpha, beta"));
  EXPECT_EQ(r.Names(), (std::vector<std::string>{"alpha", "beta"}));
}

TEST(PluginRegistry, FactoryReturningNullIsAnError) {
  PluginRegistry r;
  ASSERT_TRUE(r.Register("null", [] { return std::unique_ptr<ServicePlugin>(); }).ok());
  EXPECT_EQ(r.Create("null").status().code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace cityos

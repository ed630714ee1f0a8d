// The operator's path through a corrupt log, with the real binary: the node
// refuses to start naming the file and offset, `cityosd repair-log` keeps the
// good prefix and reports what it dropped, and the node starts again.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>

#include "cityos/bus.h"
#include "cityos/event.h"
#include "testutil.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;

TEST(RepairLogProcess, NodeRefusesCorruptLogThenRepairLetsItStart) {
  testing::TempDir dir;
  std::string data = dir.File("data");
  std::string config = dir.File("node.yaml");
  testing::WriteFile(config, "node:\n  name: repair\n  listen: 127.0.0.1:0\n  insecure: true\n  data_dir: " + data +
                                 "\nbus:\n  streams:\n    - name: carbon\n      subjects: [\"carbon.>\"]\n"
                                 "plugins:\n  - name: bus\n");
  Principal me = Principal::Node("local", "repair");
  {
    auto bus = Bus::Open({.data_dir = data + "/bus"});
    ASSERT_TRUE(bus.ok()) << bus.status();
    StreamConfig sc;
    sc.name = "carbon";
    sc.subjects = {"carbon.>"};
    ASSERT_TRUE((*bus)->CreateStream(me, sc).ok());
    for (int i = 0; i < 50; ++i) {
      auto e = EventBuilder()
                   .Source("//t").Type("t.v1.T").Subject("carbon.meter.x")
                   .Classification(event::v1::CLASSIFICATION_INTERNAL).Owner("grid")
                   .TextData("text/plain", std::string(100, 'a' + i % 26))
                   .Build();
      ASSERT_TRUE((*bus)->Publish(me, {*e}).ok());
    }
    ASSERT_TRUE((*bus)->Close().ok());
  }
  // Flip one byte in the middle of the first segment: good records follow it.
  std::string segment;
  for (const auto& f : std::filesystem::directory_iterator(data + "/bus/carbon/log")) {
    if (f.path().extension() == ".log") segment = f.path().string();
  }
  ASSERT_FALSE(segment.empty());
  auto size = std::filesystem::file_size(segment);
  {
    std::fstream f(segment, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size / 3));
    char c;
    f.seekg(static_cast<std::streamoff>(size / 3));
    f.get(c);
    f.seekp(static_cast<std::streamoff>(size / 3));
    f.put(static_cast<char>(c ^ 0x5A));
  }

  auto refused = testing::Subprocess::Start({CITYOSD_PATH, "--config", config});
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ(*(*refused)->Wait(absl::Seconds(30)), 1);
  std::string err = (*refused)->stderr_text();
  EXPECT_THAT(err, HasSubstr("log corruption in " + segment + " at byte offset"));
  EXPECT_THAT(err, HasSubstr("cityosd repair-log"));

  auto repair = testing::Subprocess::Start({CITYOSD_PATH, "repair-log", data + "/bus/carbon"});
  ASSERT_TRUE(repair.ok());
  EXPECT_EQ(*(*repair)->Wait(absl::Seconds(30)), 0) << (*repair)->stderr_text();
  EXPECT_THAT((*repair)->stdout_text(), HasSubstr("cut " + segment + " at offset"));
  EXPECT_THAT((*repair)->stdout_text(), HasSubstr("last good sequence"));

  auto node = testing::Subprocess::Start({CITYOSD_PATH, "--config", config});
  ASSERT_TRUE(node.ok());
  ASSERT_TRUE((*node)->WaitForLine("listening on", absl::Seconds(30)).ok())
      << (*node)->stderr_text();
  (*node)->Signal(SIGTERM);
  EXPECT_EQ(*(*node)->Wait(absl::Seconds(30)), 0);

  // What is left is a gap-free prefix.
  auto bus = Bus::Open({.data_dir = data + "/bus"});
  ASSERT_TRUE(bus.ok()) << bus.status();
  auto info = (*bus)->GetStream(me, "carbon");
  ASSERT_TRUE(info.ok());
  EXPECT_GT(info->last_sequence, 0u);
  EXPECT_LT(info->last_sequence, 50u);
  EXPECT_EQ(info->events, info->last_sequence);
}

}  // namespace
}  // namespace cityos

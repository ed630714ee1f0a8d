// cityosctl: the admin CLI of a cityos mesh. Thin: signals, then ctl::Run.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <thread>

#include "cityosctl.h"

int main(int argc, char** argv) {
  // Ctrl-C ends `topics tail` cleanly (the call is cancelled and the command
  // returns); elsewhere it exits at once.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  std::thread([stop] {
    int sig = 0;
    sigwait(&stop, &sig);
    if (!cityos::ctl::CancelActiveCall()) _exit(128 + sig);
  }).detach();
  return cityos::ctl::Run(argc, argv, std::cout, std::cerr);
}

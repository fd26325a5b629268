/* A static AArch32 (armhf) program for the aarch64 VM check. Run by root without a filter it
 * prints "compat ok": the kernel runs AArch32 code (CONFIG_COMPAT). Run under bottle-init's
 * api-only filter it must be killed with SIGSYS at its first system call, before main. */
#include <unistd.h>

int main(void)
{
    static const char msg[] = "compat ok\n";
    return write(1, msg, sizeof msg - 1) == (ssize_t)(sizeof msg - 1) ? 0 : 1;
}

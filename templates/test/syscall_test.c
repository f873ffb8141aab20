/*
 * Test program for the {{name}} system call (number {{nr}}), written by kbuild.
 *
 * kbuild runs it as /init in a direct QEMU boot, where it reboots the machine
 * when done so that QEMU exits, and as an ordinary program inside a VM.
 * kbuild reads the "kbuild-test:" lines it prints.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
	long ret;
	int saved_errno;

	printf("kbuild-test: start {{name}} nr={{nr}}\n");
	fflush(stdout);

	errno = 0;
	ret = syscall({{nr}}{{call_args}});
	saved_errno = errno;

	printf("kbuild-test: result ret=%ld errno=%d\n", ret, saved_errno);
	fflush(stdout);

	if (getpid() == 1) {
		sync();
		reboot(RB_AUTOBOOT);
	}
	return 0;
}

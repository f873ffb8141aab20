// SPDX-License-Identifier: GPL-2.0
/*
 * {{name}}: a system call added by kbuild from its "sum" template.
 * Returns the sum of its arguments and logs each call to the kernel log.
 */
#include <linux/kernel.h>
#include <linux/printk.h>
#include <linux/syscalls.h>

{{define}}
{
	long result = {{sum}};

	pr_info("kbuild: {{name}} called, returning %ld\n", result);
	return result;
}
